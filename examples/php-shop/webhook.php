<?php
/**
 * The shop's webhook receiver for the tracker's events (TRACKER_WEBHOOK_URL points here).
 *
 * For each delivery: check the signature and timestamp (401 if they fail), then, in ONE
 * database transaction,
 *   1. record the event's ID in tracker_events: an ID already there means the event was
 *      applied before (deliveries are at least once), so nothing more happens;
 *   2. lock the order's row, and apply `order.status_changed` only if the event is newer
 *      than what the row reflects (its created_at, the moment the tracker saw the change):
 *      a resent, older event never moves an order back;
 *   3. for Partial and Canceled, credit the customer what is still owed: the refund of the
 *      order's own charge minus what `refunded` says was credited already, both from the row
 *      as step 2's lock read it, so an order is refunded once whatever events arrive, even
 *      together, and a correction (Partial to Canceled) credits only the difference;
 * then COMMIT, and only then answer 200. Any failure rolls everything back and answers
 * 500: the tracker delivers the event again later, and nothing was half applied.
 *
 * Run it under any web server with PHP 8.1+ and pdo_mysql; to try it:
 *     php -S 127.0.0.1:8080 examples/php-shop/webhook.php
 * See docs/php-shop.md.
 */

declare(strict_types=1);

require __DIR__ . '/shop.php';

use Tracker\Kit;

/** The tracker's statuses in the words SmartPanel-family panels store. "Unknown" keeps the row's. */
const SHOP_STATUS = [
    'Pending' => 'pending',
    'Processing' => 'processing',
    'In progress' => 'inprogress',
    'Completed' => 'completed',
    'Partial' => 'partial',
    'Canceled' => 'canceled',
    'Not found' => 'error',
];
const MYSQL_DUPLICATE_KEY = 1062;

final class UnknownOrder extends RuntimeException
{
}

/** @param array<string, mixed> $body */
function answer(int $status, array $body): never
{
    http_response_code($status);
    header('Content-Type: application/json');
    echo json_encode($body), "\n";
    exit;
}

/** The event's created_at as MariaDB's DATETIME(6) text (UTC), which also sorts as text. */
function event_time(mixed $createdAt): string
{
    if (!is_string($createdAt)
        || preg_match('/^(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(?:\.(\d{1,6}))?(?:Z|\+00:00)$/', $createdAt, $m) !== 1) {
        throw new InvalidArgumentException('created_at is not an ISO 8601 UTC time');
    }
    return $m[1] . ' ' . $m[2] . '.' . str_pad($m[3] ?? '', 6, '0');
}

/**
 * Applies one event in one transaction; what happened: applied, stale, ignored or duplicate.
 *
 * @param array<string, mixed> $event
 */
function apply_event(PDO $db, array $event): string
{
    $db->beginTransaction();
    try {
        $outcome = apply_in_transaction($db, $event);
        if ($outcome === 'duplicate') {
            $db->rollBack();
            return $outcome;
        }
        $db->commit();
        return $outcome;
    } catch (Throwable $error) {
        if ($db->inTransaction()) {
            $db->rollBack();
        }
        throw $error;
    }
}

/** @param array<string, mixed> $event */
function apply_in_transaction(PDO $db, array $event): string
{
    // 1. The event's ID, first: a second delivery of it stops here. (A concurrent one
    //    waits on this row until this transaction ends, then finds it.)
    try {
        $db->prepare('INSERT INTO tracker_events (event_id, type, outcome) VALUES (?, ?, ?)')
            ->execute([$event['id'], $event['type'], 'applying']);
    } catch (PDOException $error) {
        if (($error->errorInfo[1] ?? null) === MYSQL_DUPLICATE_KEY) {
            return 'duplicate';
        }
        throw $error;
    }
    if ($event['type'] !== 'order.status_changed') {
        // refill.status_changed and provider alerts: recorded; act on them here if you wish.
        mark_event($db, $event['id'], null, 'ignored', '0');
        return 'ignored';
    }

    // 2. The order's row, locked until COMMIT.
    $provider = $db->prepare('SELECT id FROM api_providers WHERE tracker_name = ?');
    $provider->execute([(string) $event['provider']]);
    $providerId = $provider->fetchColumn();
    $lookup = $db->prepare(
        'SELECT id, uid, quantity, charge, status, refunded, tracker_observed_at
         FROM orders WHERE api_provider_id = ? AND api_order_id = ? FOR UPDATE'
    );
    $lookup->execute([$providerId === false ? 0 : $providerId, (string) $event['order_id']]);
    $order = $lookup->fetch();
    if ($order === false) {
        // Maybe not committed yet by the code that placed it: refuse, the tracker retries.
        throw new UnknownOrder("no order {$event['order_id']} of provider {$event['provider']}");
    }
    $observedAt = event_time($event['created_at']);
    if ($order['tracker_observed_at'] !== null && $observedAt <= $order['tracker_observed_at']) {
        mark_event($db, $event['id'], $order['id'], 'stale', '0');
        return 'stale';
    }

    // 3. The refund still owed, in SQL's exact decimals (never PHP floats), from $order: the
    //    row as the lock above read it.
    $credit = '0';
    if ($event['to_status'] === 'Partial' || $event['to_status'] === 'Canceled') {
        $credit = refund_owed($db, $order, $event);
        if ($credit !== '0') {
            $db->prepare('UPDATE users SET balance = balance + ? WHERE id = ?')->execute([$credit, $order['uid']]);
        }
    }
    $db->prepare(
        'UPDATE orders SET status = ?, remains = ?, start_counter = ?, provider_charge = ?,
                refunded = refunded + ?, tracker_observed_at = ?, tracker_event_id = ?
         WHERE id = ?'
    )->execute([
        SHOP_STATUS[$event['to_status']] ?? $order['status'],
        $event['remains'],
        $event['start_count'],
        $event['charge'],
        $credit,
        $observedAt,
        $event['id'],
        $order['id'],
    ]);
    mark_event($db, $event['id'], $order['id'], 'applied', $credit);
    return 'applied';
}

/**
 * What to credit now for a Partial or Canceled order: its refund, less what was credited
 * before (never negative: a later Completed does not take money back by itself).
 * The refund is the undelivered share of the customer's charge (the shop's price, not the
 * provider's): remains / quantity of it for Partial, all of it for Canceled. The share is
 * the event's refund_fraction, but computed here from the two whole numbers, so the amount
 * is rounded to the cent once, exactly: refund_fraction is a decimal cut at 28 digits, and
 * 2.59 x 3865/7000 is 1.43005 exactly (1.4301), while 2.59 x 0.55214285714285714285714285714
 * is 1.43004999... (1.4300).
 *
 * $order must be the row as the locking read (SELECT ... FOR UPDATE) returned it, never
 * read again with a plain SELECT: under InnoDB's default isolation, REPEATABLE READ, a plain
 * SELECT sees the database as it was at the transaction's first plain read (the
 * api_providers lookup), and a concurrent event of the same order (a Partial, then a
 * Canceled) may have committed its credit since, while this one waited for the row's lock.
 * A plain SELECT of `refunded` would miss that credit and pay it again; the locking read
 * always sees the latest committed row.
 *
 * @param array<string, mixed> $order
 * @param array<string, mixed> $event
 */
function refund_owed(PDO $db, array $order, array $event): string
{
    $undelivered = $event['to_status'] === 'Canceled' ? (int) $order['quantity'] : $event['remains'];
    if (!is_int($undelivered)) {
        error_log("tracker event {$event['id']}: a Partial order without remains; refund order {$order['id']} by hand");
        return '0';
    }
    // SQL only computes here (no table is read). Every parameter CAST: an uncast one can make
    // MariaDB compute it all in floating point.
    $query = $db->prepare(
        'SELECT credit, credit > 0 AS owed FROM (
           SELECT GREATEST(
             ROUND(CAST(? AS DECIMAL(65,30)) * LEAST(GREATEST(CAST(? AS SIGNED), 0), CAST(? AS SIGNED)) / CAST(? AS SIGNED), 4)
               - CAST(? AS DECIMAL(15,4)),
             0) AS credit) AS refund'
    );
    $query->execute([$order['charge'], $undelivered, $order['quantity'], $order['quantity'], $order['refunded']]);
    $row = $query->fetch();
    return (int) $row['owed'] === 1 ? (string) $row['credit'] : '0';
}

function mark_event(PDO $db, string $eventId, int|string|null $orderId, string $outcome, string $refund): void
{
    $db->prepare('UPDATE tracker_events SET order_id = ?, outcome = ?, refund = ? WHERE event_id = ?')
        ->execute([$orderId, $outcome, $refund, $eventId]);
}

// --- the request ---------------------------------------------------------------------------

if (($_SERVER['REQUEST_METHOD'] ?? '') !== 'POST') {
    answer(405, ['error' => 'POST the tracker\'s events here']);
}
$config = shop_config();
$rawBody = (string) file_get_contents('php://input');
$problem = Kit::webhookProblem(getallheaders(), $rawBody, (string) $config['webhook_secret']);
if ($problem !== null) {
    error_log("tracker webhook refused: $problem");
    answer(401, ['error' => 'signature']);
}
$event = json_decode($rawBody, true);
if (!is_array($event) || !is_string($event['id'] ?? null) || !is_string($event['type'] ?? null)) {
    answer(400, ['error' => 'not a tracker event']);
}
if ($event['type'] === 'order.status_changed') {
    try {
        event_time($event['created_at'] ?? null);
    } catch (InvalidArgumentException $error) {
        answer(400, ['error' => $error->getMessage()]);
    }
    if (!is_int($event['order_id'] ?? null) || !is_string($event['to_status'] ?? null)) {
        answer(400, ['error' => 'not an order event']);
    }
}
try {
    $outcome = apply_event(shop_db(), $event);
} catch (UnknownOrder $error) {
    error_log('tracker event ' . $event['id'] . ': ' . $error->getMessage());
    answer(404, ['error' => 'unknown order']);
} catch (Throwable $error) {
    error_log('tracker event ' . $event['id'] . ' not applied: ' . $error->getMessage());
    answer(500, ['error' => 'not applied']);
}
answer(200, ['outcome' => $outcome]);
