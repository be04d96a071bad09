<?php
// Drives kit/php/TrackerKit.php for the tests, as a shop's PHP code calls it.
// stdin: {"url": ..., "user": ..., "password": ..., "timeout": ..., "calls": [
//   {"call": "trackOrders", "provider": ..., "ids": [...], "service": ..., "quantity": ...},
//   {"call": "reportDrop", "provider": ..., "id": ...},
//   {"call": "checkOrderIds", "ids": [...]},
//   {"call": "taskMessage", "task": ..., "args": [...], "kwargs": {...}},
//   {"call": "webhookProblem", "headers": {...}, "body": ..., "secret": ..., "tolerance": ...}]}
// stdout: one JSON list with each call's result, or {"error": class, "message": ...} and exit 1.
declare(strict_types=1);

require __DIR__ . '/../../kit/php/TrackerKit.php';

use Tracker\Kit;

$input = json_decode((string) stream_get_contents(STDIN), true, 512, JSON_THROW_ON_ERROR | JSON_BIGINT_AS_STRING);
$results = [];
try {
    $kit = isset($input['url'])
        ? new Kit($input['url'], $input['user'] ?? null, $input['password'] ?? null, (float) ($input['timeout'] ?? 5.0))
        : null;
    foreach ($input['calls'] as $call) {
        $results[] = match ($call['call']) {
            'trackOrders' => $kit->trackOrders($call['provider'], $call['ids'], $call['service'] ?? null, $call['quantity'] ?? null),
            'reportDrop' => $kit->reportDrop($call['provider'], $call['id']),
            'checkOrderIds' => Kit::checkOrderIds($call['ids']),
            'taskMessage' => Kit::taskMessage($call['task'], $call['args'], $call['kwargs'])[1],
            'webhookProblem' => Kit::webhookProblem($call['headers'], $call['body'], $call['secret'], $call['tolerance'] ?? 300),
            'verifyWebhook' => Kit::verifyWebhook($call['headers'], $call['body'], $call['secret'], $call['tolerance'] ?? 300),
        };
    }
} catch (Throwable $error) {
    echo json_encode(['error' => get_class($error), 'message' => $error->getMessage(), 'done' => $results]), "\n";
    exit(1);
}
// 'refused' is keyed by the IDs given: a JSON object even when the keys look like a list's.
$results = array_map(
    static fn (mixed $result): mixed => is_array($result) && isset($result['refused'])
        ? ['refused' => (object) $result['refused']] + $result
        : $result,
    $results,
);
echo json_encode($results, JSON_UNESCAPED_SLASHES), "\n";
