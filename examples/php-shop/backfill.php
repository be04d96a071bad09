<?php
/**
 * Hands every open order of the shop to the tracker, once, when the shop switches from its
 * status cron to the tracker (docs/php-shop.md, step 5). Safe to run again: the tracker
 * tracks an order once however often it is handed over.
 *
 *     php examples/php-shop/backfill.php [--provider=TRACKER_NAME]
 *
 * Orders go in calls grouped by provider, service and quantity (the quantity of a call
 * applies to all its IDs, and lets events carry the refund fraction), at most 1,000 IDs a
 * call. Prints what was sent and what the tracker's rules refused; exits 1 if it could
 * not hand everything over.
 */

declare(strict_types=1);

require __DIR__ . '/shop.php';

use Tracker\Kit;

const IDS_PER_CALL = 1000;
const FINAL_STATUSES = ['completed', 'partial', 'canceled', 'error'];

$options = getopt('', ['provider:']);
$only = isset($options['provider']) ? (string) $options['provider'] : null;
$config = shop_config();
$tracker = new Kit($config['tracker_url'], $config['flower_user'], $config['flower_password']);

$query = shop_db()->prepare(
    'SELECT p.tracker_name, o.api_service_id, o.quantity, o.api_order_id
     FROM orders o JOIN api_providers p ON p.id = o.api_provider_id
     WHERE o.api_order_id IS NOT NULL AND p.tracker_name IS NOT NULL
       AND (? IS NULL OR p.tracker_name = ?)
       AND o.status NOT IN (' . implode(', ', array_fill(0, count(FINAL_STATUSES), '?')) . ')
     ORDER BY p.tracker_name, o.api_service_id, o.quantity, o.api_order_id'
);
$query->execute([$only, $only, ...FINAL_STATUSES]);

$groups = [];
foreach ($query as $row) {
    $key = $row['tracker_name'] . "\0" . $row['api_service_id'] . "\0" . $row['quantity'];
    $groups[$key][] = $row;
}
$sent = $calls = 0;
$failed = false;
foreach ($groups as $rows) {
    [$provider, $service, $quantity] = [$rows[0]['tracker_name'], $rows[0]['api_service_id'], $rows[0]['quantity']];
    foreach (array_chunk(array_column($rows, 'api_order_id'), IDS_PER_CALL) as $ids) {
        try {
            $result = $tracker->trackOrders($provider, $ids, $service === null ? null : (int) $service, (int) $quantity);
        } catch (Tracker\KitError $error) {
            fwrite(STDERR, "backfill stopped: {$error->getMessage()}\n");
            exit(1);
        }
        $calls++;
        $sent += count($result['sent']);
        foreach ($result['refused'] as $id => $reason) {
            $failed = true;
            fwrite(STDERR, "$provider: order ID $id refused: $reason\n");
        }
    }
}
echo "handed $sent open orders to the tracker in $calls calls", $only === null ? '' : " (provider $only)", "\n";
exit($failed ? 1 : 0);
