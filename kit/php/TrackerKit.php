<?php
/**
 * The tracker's PHP kit: one file, PHP 8.1+, nothing beyond PHP's default extensions
 * (no Composer, no phpredis, no curl).
 *
 *     require_once __DIR__ . '/TrackerKit.php';
 *
 *     $tracker = new Tracker\Kit('redis://127.0.0.1:6379/0');          // the tracker's TRACKER_BROKER_URL
 *     // or, through Flower's HTTP API:
 *     $tracker = new Tracker\Kit('http://127.0.0.1:5555', 'shop', 'flower-password');
 *
 *     $result = $tracker->trackOrders('mypanel', [1001, '1002'], service: 12, quantity: 1000);
 *     // ['task_id' => '…', 'sent' => [1001, 1002], 'refused' => [], 'duplicates' => 0, …]
 *     $tracker->reportDrop('mypanel', 1001);
 *
 *     // In the webhook receiver:
 *     if (!Tracker\Kit::verifyWebhook(getallheaders(), file_get_contents('php://input'), $secret)) {
 *         http_response_code(401);
 *         exit;
 *     }
 *
 * The Redis transport writes the Celery task message (protocol 2, JSON) onto the queue
 * `celery` exactly as Celery's own send_task does, speaking Redis' protocol over a plain
 * socket. The Flower transport POSTs to Flower's /api/task/async-apply with basic auth.
 * Both fail loudly (Tracker\KitError) when nothing answers, when credentials are refused,
 * and, for Redis, when no tracker worker has ever consumed that Redis database: a message
 * published there would wait forever.
 *
 * Order IDs are checked with the tracker's own rules before anything is sent: positive
 * whole numbers up to 2^63-1, as ints or digit strings. The others come back in
 * 'refused' with the reason, and the valid IDs of the same call are sent anyway.
 *
 * See docs/php-shop.md in the tracker's repository.
 */

declare(strict_types=1);

namespace Tracker;

/** Nothing listens, credentials were refused, or the tracker's side answered an error. */
final class KitError extends \RuntimeException
{
}

final class Kit
{
    public const TRACK_ORDERS = 'tracker.track_orders';
    public const REPORT_DROP = 'tracker.report_drop';
    /** The queue the tracker's workers consume the shop's tasks from (Celery's default). */
    public const QUEUE = 'celery';
    /** Left in Redis by every tracker worker that consumed this database: kombu's binding of
     *  the tracker's own polls queue. Its absence means no tracker worker reads here. */
    public const WORKER_MARK = '_kombu.binding.tracker.polls';
    public const MAX_ORDER_ID = '9223372036854775807';
    /** A refused string is named as given up to this many characters, or up to ECHOED_DIGITS
     *  when it is digits; a longer one (a key sent by mistake?) by its length only. The
     *  tracker's rule: tracker/core/ids.py. */
    public const ECHOED_CHARACTERS = 16;
    public const ECHOED_DIGITS = 20;
    public const SIGNATURE_HEADER = 'X-Tracker-Signature';
    public const TIMESTAMP_HEADER = 'X-Tracker-Timestamp';
    public const EVENT_ID_HEADER = 'X-Tracker-Event-Id';

    private string $transport;
    /** @var array{host?: string, port?: int, socket?: string, user: ?string, password: ?string, db: int} */
    private array $redis = ['user' => null, 'password' => null, 'db' => 0];
    private string $flowerBase = '';
    private ?string $flowerAuth = null;
    /** The URL without its password, for messages. */
    private string $shownUrl;

    /**
     * @param string $url  redis://[[user]:password@]host[:port][/db], unix:///path/to/redis.sock?db=N
     *                     (the tracker's TRACKER_BROKER_URL), or http(s)://host:port of Flower.
     *                     Not sentinel:// (behind Sentinel, use Flower) nor rediss://.
     *                     Percent-encode '/', '#', '?' and '@' in a user name or password.
     * @param ?string $user, $password  Flower's basic auth (FLOWER_BASIC_AUTH), unless in the URL.
     * @param float $timeout  seconds to connect, and to wait for each answer.
     */
    public function __construct(
        string $url,
        ?string $user = null,
        ?string $password = null,
        private float $timeout = 5.0,
    ) {
        $this->shownUrl = self::withoutPassword($url);
        $parts = self::urlParts($url);
        // parse_url() gives up on a password with an unencoded '/', '#' or '?': the scheme still says what was meant.
        $scheme = strtolower(is_array($parts)
            ? (string) ($parts['scheme'] ?? '')
            : (preg_match('{^([a-z][a-z0-9+.-]*)://}i', $url, $match) === 1 ? $match[1] : ''));
        if ($scheme === 'sentinel') {
            throw new \InvalidArgumentException(
                "the kit cannot find the tracker's Redis behind Sentinel: use Flower's HTTP API, or the current master's redis:// URL; got {$this->shownUrl}"
            );
        }
        if ($scheme === 'rediss') {
            throw new \InvalidArgumentException(
                "rediss:// (Redis over TLS) is not supported by the kit: use Flower over https, or a local TLS tunnel to {$this->shownUrl}"
            );
        }
        if (!in_array($scheme, ['redis', 'unix', 'redis+socket', 'http', 'https'], true)) {
            throw new \InvalidArgumentException(
                "the tracker URL must be redis://, unix:// (the tracker's TRACKER_BROKER_URL) or http(s):// (Flower), got {$this->shownUrl}"
            );
        }
        if ($parts === false) {
            throw new \InvalidArgumentException(
                "cannot read the URL {$this->shownUrl}: percent-encode the user name and password ('/' as %2F, '#' as %23, '?' as %3F, '@' as %40)"
            );
        }
        if ($scheme === 'redis' || $scheme === 'unix' || $scheme === 'redis+socket') {
            $this->transport = 'redis';
            $this->redis = self::redisTarget($scheme, $parts, $this->shownUrl);
            return;
        }
        $this->transport = 'flower';
        $host = $parts['host'] ?? '';
        $port = isset($parts['port']) ? ':' . $parts['port'] : '';
        $path = rtrim($parts['path'] ?? '', '/');
        $this->flowerBase = "$scheme://$host$port$path";
        $user ??= isset($parts['user']) ? rawurldecode($parts['user']) : null;
        $password ??= isset($parts['pass']) ? rawurldecode($parts['pass']) : null;
        if ($user !== null || $password !== null) {
            $this->flowerAuth = 'Basic ' . base64_encode(($user ?? '') . ':' . ($password ?? ''));
        }
    }

    /**
     * Hand order IDs to the tracker (`tracker.track_orders`). Idempotent: an order sent twice
     * is tracked once. `$quantity` applies to every ID of the call; pass it, so events carry
     * the refund fraction.
     *
     * @param array<mixed> $ids  ints or digit strings
     * @return array{task_id: ?string, sent: list<int>, refused: array<int|string, string>, duplicates: int, queue_length?: int}
     *   'sent': the IDs handed over, as ints,
     *   'refused': given ID => why it was refused (nothing is sent for those); a long string
     *              is named by its length only (ECHOED_CHARACTERS),
     *   'task_id': the Celery task's ID (null when no ID was valid: nothing was sent),
     *   'queue_length': (Redis only) messages waiting in the queue after ours.
     */
    public function trackOrders(string $provider, array $ids, ?int $service = null, ?int $quantity = null): array
    {
        self::checkProvider($provider);
        $kwargs = [];
        foreach (['service' => $service, 'quantity' => $quantity] as $name => $value) {
            if ($value !== null) {
                if ($value <= 0) {
                    throw new \InvalidArgumentException("$name $value must be a positive number");
                }
                $kwargs[$name] = $value;
            }
        }
        $checked = self::checkOrderIds($ids);
        $result = ['task_id' => null, 'sent' => $checked['valid'], 'refused' => $checked['refused'], 'duplicates' => $checked['duplicates']];
        if ($checked['valid'] === []) {
            return $result;
        }
        return array_merge($result, $this->send(self::TRACK_ORDERS, [$provider, $checked['valid']], $kwargs));
    }

    /**
     * Tell the tracker a completed order lost part of its count (`tracker.report_drop`); it
     * requests a refill when the order is eligible.
     *
     * @return array{task_id: ?string, sent: list<int>, refused: array<int|string, string>, duplicates: int, queue_length?: int}
     */
    public function reportDrop(string $provider, int|string $orderId): array
    {
        self::checkProvider($provider);
        $checked = self::checkOrderIds([$orderId]);
        $result = ['task_id' => null, 'sent' => $checked['valid'], 'refused' => $checked['refused'], 'duplicates' => 0];
        if ($checked['valid'] === []) {
            return $result;
        }
        return array_merge($result, $this->send(self::REPORT_DROP, [$provider, $checked['valid'][0]], []));
    }

    /**
     * The tracker's rules for order IDs (tracker/core/ids.py): a positive whole number up to
     * 2^63-1, given as an int or a digit string (spaces around it allowed). Duplicates are
     * folded into one.
     *
     * @param array<mixed> $ids
     * @return array{valid: list<int>, refused: array<int|string, string>, duplicates: int}
     */
    public static function checkOrderIds(array $ids): array
    {
        $valid = [];
        $seen = [];
        $refused = [];
        $duplicates = 0;
        foreach ($ids as $given) {
            $reason = self::idProblem($given, $value);
            if ($reason !== null) {
                $refused[self::describe($given)] = $reason;
                continue;
            }
            if (isset($seen[(string) $value])) {
                $duplicates++;
                continue;
            }
            $seen[(string) $value] = true;
            $valid[] = $value;
        }
        return ['valid' => $valid, 'refused' => $refused, 'duplicates' => $duplicates];
    }

    /**
     * Whether a webhook delivery is the tracker's: its X-Tracker-Signature is the HMAC-SHA256
     * of "{timestamp}.{raw body}" with the shared secret (TRACKER_WEBHOOK_SECRET), and its
     * X-Tracker-Timestamp is within $toleranceSeconds of this host's clock (replays of old
     * deliveries are refused). The comparison takes constant time.
     *
     * @param array<string, string|list<string>> $headers  getallheaders(), or $_SERVER
     */
    public static function verifyWebhook(array $headers, string $rawBody, string $secret, int $toleranceSeconds = 300): bool
    {
        return self::webhookProblem($headers, $rawBody, $secret, $toleranceSeconds) === null;
    }

    /**
     * Why a webhook delivery is refused (for your log), or null when verifyWebhook accepts it.
     *
     * @param array<string, string|list<string>> $headers
     */
    public static function webhookProblem(
        array $headers,
        string $rawBody,
        string $secret,
        int $toleranceSeconds = 300,
        ?int $now = null,
    ): ?string {
        if ($secret === '') {
            return 'no webhook secret is configured';
        }
        $timestamp = self::header($headers, self::TIMESTAMP_HEADER);
        $signature = self::header($headers, self::SIGNATURE_HEADER);
        if ($timestamp === null || $signature === null) {
            return 'the ' . self::TIMESTAMP_HEADER . ' or ' . self::SIGNATURE_HEADER . ' header is missing';
        }
        if (preg_match('/^[0-9]{1,12}$/', $timestamp) !== 1) {
            return 'the timestamp is not Unix seconds';
        }
        $skew = abs(($now ?? time()) - (int) $timestamp);
        if ($skew > $toleranceSeconds) {
            return "the timestamp is $skew s away from this host's clock (more than $toleranceSeconds s): a replay, or a clock to fix";
        }
        $expected = 'sha256=' . hash_hmac('sha256', $timestamp . '.' . $rawBody, $secret);
        if (!hash_equals($expected, $signature)) {
            return 'the signature does not match this body and timestamp (a wrong secret, or a modified body)';
        }
        return null;
    }

    // --- sending ------------------------------------------------------------------------

    /**
     * @param list<mixed> $args
     * @param array<string, mixed> $kwargs
     * @return array{task_id: string, queue_length?: int}
     */
    private function send(string $task, array $args, array $kwargs): array
    {
        return $this->transport === 'redis'
            ? $this->sendThroughRedis($task, $args, $kwargs)
            : $this->sendThroughFlower($task, $args, $kwargs);
    }

    /**
     * The message Celery's send_task writes (protocol 2): headers name the task, the body is
     * [args, kwargs, embed] in JSON, base64-encoded as kombu's Redis transport does.
     *
     * @param list<mixed> $args
     * @param array<string, mixed> $kwargs
     * @return array{0: string, 1: string}  the task ID and the message
     */
    public static function taskMessage(string $task, array $args, array $kwargs, ?string $taskId = null): array
    {
        $taskId ??= self::uuid4();
        $body = self::json([$args, (object) $kwargs, ['callbacks' => null, 'errbacks' => null, 'chain' => null, 'chord' => null]]);
        $message = self::json([
            'body' => base64_encode($body),
            'content-encoding' => 'utf-8',
            'content-type' => 'application/json',
            'headers' => [
                'lang' => 'php',
                'task' => $task,
                'id' => $taskId,
                'shadow' => null,
                'eta' => null,
                'expires' => null,
                'group' => null,
                'group_index' => null,
                'retries' => 0,
                'timelimit' => [null, null],
                'root_id' => $taskId,
                'parent_id' => null,
                // What Flower and the worker log show: Python's repr, as Celery writes it.
                'argsrepr' => self::pythonRepr($args),
                'kwargsrepr' => self::pythonRepr((object) $kwargs),
                'origin' => 'php-kit:' . getmypid() . '@' . (gethostname() ?: 'localhost'),
                'ignore_result' => null,
                'replaced_task_nesting' => 0,
                'stamped_headers' => null,
                'stamps' => new \stdClass(),
            ],
            'properties' => [
                'correlation_id' => $taskId,
                'delivery_mode' => 2,
                'delivery_info' => ['exchange' => '', 'routing_key' => self::QUEUE],
                'priority' => 0,
                'body_encoding' => 'base64',
                'delivery_tag' => self::uuid4(),
            ],
        ]);
        return [$taskId, $message];
    }

    /**
     * @param list<mixed> $args
     * @param array<string, mixed> $kwargs
     * @return array{task_id: string, queue_length: int}
     */
    private function sendThroughRedis(string $task, array $args, array $kwargs): array
    {
        [$taskId, $message] = self::taskMessage($task, $args, $kwargs);
        $socket = $this->redisConnect();
        try {
            if ($this->redis['password'] !== null) {
                $auth = $this->redis['user'] !== null
                    ? ['AUTH', $this->redis['user'], $this->redis['password']]
                    : ['AUTH', $this->redis['password']];
                $this->redisCall($socket, $auth, 'AUTH');
            }
            if ($this->redis['db'] !== 0) {
                $this->redisCall($socket, ['SELECT', (string) $this->redis['db']], 'SELECT');
            }
            if ($this->redisCall($socket, ['EXISTS', self::WORKER_MARK], 'EXISTS') !== 1) {
                throw new KitError(
                    "no tracker worker has ever consumed {$this->shownUrl}: a task sent there would wait forever."
                    . ' Use the URL of the tracker\'s TRACKER_BROKER_URL (same host, port and database number), and start its worker.'
                );
            }
            $length = $this->redisCall($socket, ['LPUSH', self::QUEUE, $message], 'LPUSH');
        } finally {
            fclose($socket);
        }
        return ['task_id' => $taskId, 'queue_length' => (int) $length];
    }

    /** @return resource */
    private function redisConnect()
    {
        $address = isset($this->redis['socket'])
            ? 'unix://' . $this->redis['socket']
            : 'tcp://' . $this->redis['host'] . ':' . $this->redis['port'];
        $errorCode = 0;
        $errorText = '';
        $socket = @stream_socket_client($address, $errorCode, $errorText, $this->timeout);
        if ($socket === false) {
            throw new KitError("cannot reach the tracker's Redis at {$this->shownUrl}: " . ($errorText ?: 'connection failed') . " (error $errorCode)");
        }
        stream_set_timeout($socket, (int) $this->timeout, (int) (fmod($this->timeout, 1.0) * 1e6));
        return $socket;
    }

    /**
     * One Redis command (RESP), and its answer: an int, a string, or null.
     *
     * @param resource $socket
     * @param list<string> $words
     */
    private function redisCall($socket, array $words, string $what): int|string|null
    {
        $command = '*' . count($words) . "\r\n";
        foreach ($words as $word) {
            $command .= '$' . strlen($word) . "\r\n" . $word . "\r\n";
        }
        for ($written = 0; $written < strlen($command); $written += $sent) {
            $sent = @fwrite($socket, substr($command, $written));
            if ($sent === false || $sent === 0) {
                $this->redisFailed($socket, "writing $what");
            }
        }
        $line = fgets($socket);
        if ($line === false) {
            $this->redisFailed($socket, "waiting for the answer to $what");
        }
        $line = rtrim($line, "\r\n");
        $payload = substr($line, 1);
        switch ($line[0] ?? '') {
            case '+':
                return $payload;
            case ':':
                return (int) $payload;
            case '$':
                if ((int) $payload < 0) {
                    return null;
                }
                $data = stream_get_contents($socket, (int) $payload + 2);
                if ($data === false || strlen($data) < (int) $payload + 2) {
                    $this->redisFailed($socket, "reading the answer to $what");
                }
                return substr($data, 0, (int) $payload);
            case '-':
                // The server's own words: a refused AUTH says so without repeating the password.
                throw new KitError("the tracker's Redis at {$this->shownUrl} refused $what: $payload");
            default:
                throw new KitError("the server at {$this->shownUrl} does not speak Redis' protocol (answer to $what: " . substr($line, 0, 40) . ')');
        }
    }

    /** @param resource $socket */
    private function redisFailed($socket, string $doing): never
    {
        $timedOut = (stream_get_meta_data($socket)['timed_out'] ?? false) === true;
        throw new KitError(
            "the tracker's Redis at {$this->shownUrl} " . ($timedOut ? "did not answer within {$this->timeout} s" : 'closed the connection')
            . " while $doing"
        );
    }

    /**
     * @param list<mixed> $args
     * @param array<string, mixed> $kwargs
     * @return array{task_id: string}
     */
    private function sendThroughFlower(string $task, array $args, array $kwargs): array
    {
        $url = "{$this->flowerBase}/api/task/async-apply/" . rawurlencode($task);
        // Connection: close, or PHP's HTTP/1.1 client waits for a kept-alive connection to time out.
        $headers = ['Content-Type: application/json', 'Accept: application/json', 'Connection: close'];
        if ($this->flowerAuth !== null) {
            $headers[] = 'Authorization: ' . $this->flowerAuth;
        }
        $context = stream_context_create([
            'http' => [
                'method' => 'POST',
                'header' => implode("\r\n", $headers),
                'content' => self::json(['args' => $args, 'kwargs' => (object) $kwargs]),
                'timeout' => $this->timeout,
                'ignore_errors' => true,   // read the body of 4xx/5xx answers too
                'follow_location' => 0,
                'protocol_version' => 1.1,
            ],
        ]);
        $problem = null;
        set_error_handler(static function (int $severity, string $message) use (&$problem): bool {
            $problem = preg_replace('/^file_get_contents\([^)]*\): /', '', $message);
            return true;
        });
        try {
            $answer = file_get_contents($url, false, $context);
            $responseHeaders = function_exists('http_get_last_response_headers')
                ? (http_get_last_response_headers() ?? [])
                : ($http_response_header ?? []);
        } finally {
            restore_error_handler();
        }
        if ($answer === false || $responseHeaders === []) {
            throw new KitError("cannot reach Flower at {$this->shownUrl}: " . ($problem ?? 'no answer'));
        }
        $status = preg_match('{^HTTP/\S+\s+(\d{3})}', (string) $responseHeaders[0], $match) === 1 ? (int) $match[1] : 0;
        if ($status === 401 || $status === 403) {
            throw new KitError("Flower at {$this->shownUrl} refused the credentials (HTTP $status): check FLOWER_BASIC_AUTH");
        }
        if ($status === 404) {
            throw new KitError("Flower at {$this->shownUrl} does not know the task $task (HTTP 404): is it the tracker's Flower (`tracker flower`)?");
        }
        $decoded = json_decode($answer, true);
        if ($status !== 200 || !is_array($decoded) || !is_string($decoded['task-id'] ?? null)) {
            $excerpt = substr(preg_replace('/\s+/', ' ', strip_tags($answer)) ?? '', 0, 200);
            throw new KitError("Flower at {$this->shownUrl} did not accept the task (HTTP $status): $excerpt");
        }
        return ['task_id' => $decoded['task-id']];
    }

    // --- helpers ------------------------------------------------------------------------

    private static function checkProvider(string $provider): void
    {
        if (trim($provider) === '') {
            throw new \InvalidArgumentException('the provider name is empty: give the name it was registered with (`tracker provider add NAME`)');
        }
    }

    /** Why $given is not an order ID, or null with $value set to the ID. */
    private static function idProblem(mixed $given, ?int &$value): ?string
    {
        $value = null;
        if (is_bool($given)) {
            return 'is a boolean, not an order ID';
        }
        if (is_int($given)) {
            if ($given <= 0) {
                return 'must be a positive number';
            }
            $value = $given;
            return null;
        }
        if (!is_string($given)) {
            return 'has type ' . get_debug_type($given) . '; expected a number or a digit string';
        }
        $text = self::stripped($given);
        if ($text === '') {
            return 'is empty';
        }
        if (preg_match('/^[0-9]+$/', $text) !== 1) {
            return 'is not a positive whole number';
        }
        // Digits compare as numbers when they are as many: '0' sorts before '9'.
        if (strlen($text) > 19 || (strlen($text) === 19 && strcmp($text, self::MAX_ORDER_ID) > 0)) {
            return 'is too large for an order ID';
        }
        $value = (int) $text;
        if ($value <= 0) {
            $value = null;
            return 'must be a positive number';
        }
        return null;
    }

    /** Python's str.strip(): ASCII whitespace and the Unicode spaces shops paste. */
    private static function stripped(string $given): string
    {
        return preg_replace('/^[\s\x{85}\x{a0}\x{2000}-\x{200a}\x{2028}\x{2029}\x{3000}]+|[\s\x{85}\x{a0}\x{2000}-\x{200a}\x{2028}\x{2029}\x{3000}]+$/u', '', $given) ?? $given;
    }

    /** How a refused ID is named in 'refused': as the tracker names it (tracker/core/ids.py). */
    private static function describe(mixed $given): int|string
    {
        if (is_string($given)) {
            // Characters, as Python counts them, without mbstring (not a default extension);
            // bytes when the string is not UTF-8. Nothing is cut: a string is whole or unnamed.
            $length = preg_match_all('/./su', $given);
            if ($length === false) {
                $length = strlen($given);
            }
            $digits = preg_match('/^[0-9]+$/', self::stripped($given)) === 1;
            return $length <= self::ECHOED_CHARACTERS || ($digits && $length <= self::ECHOED_DIGITS)
                ? $given
                : "a string of $length characters";
        }
        if (is_float($given)) {
            $text = var_export($given, true);
            return strlen($text) <= 18 ? $text : 'a float';
        }
        return match (true) {
            is_int($given) => $given,
            $given === null => 'null',
            is_bool($given) => $given ? 'true' : 'false',
            default => get_debug_type($given),
        };
    }

    /**
     * @param array<string, string|list<string>> $headers
     */
    private static function header(array $headers, string $name): ?string
    {
        $wanted = strtolower($name);
        foreach ($headers as $key => $value) {
            // getallheaders() keys ("X-Tracker-Signature", any case) and $_SERVER's ("HTTP_X_TRACKER_SIGNATURE").
            $normal = strtolower(str_replace('_', '-', (string) $key));
            if (str_starts_with($normal, 'http-')) {
                $normal = substr($normal, 5);
            }
            if ($normal === $wanted) {
                $value = is_array($value) ? ($value[0] ?? null) : $value;
                return is_string($value) ? trim($value) : null;
            }
        }
        return null;
    }

    /**
     * @param array<string, mixed> $parts
     * @return array{host?: string, port?: int, socket?: string, user: ?string, password: ?string, db: int}
     */
    private static function redisTarget(string $scheme, array $parts, string $shown): array
    {
        $query = [];
        parse_str($parts['query'] ?? '', $query);
        $user = isset($parts['user']) && $parts['user'] !== '' ? rawurldecode($parts['user']) : null;
        $password = isset($parts['pass']) ? rawurldecode($parts['pass']) : null;
        if ($scheme === 'redis') {
            $db = trim($parts['path'] ?? '', '/');
            $target = ['host' => $parts['host'] ?? '127.0.0.1', 'port' => (int) ($parts['port'] ?? 6379)];
        } else {
            $db = (string) ($query['db'] ?? $query['virtual_host'] ?? '');
            $target = ['socket' => $parts['path'] ?? ''];
            if ($target['socket'] === '') {
                throw new \InvalidArgumentException("no socket path in $shown (unix:///path/to/redis.sock?db=0)");
            }
        }
        if ($db !== '' && preg_match('/^[0-9]+$/', $db) !== 1) {
            throw new \InvalidArgumentException("the Redis database in $shown must be a number");
        }
        return $target + ['user' => $user, 'password' => $password, 'db' => (int) $db];
    }

    /**
     * parse_url(), and the socket URLs it cannot read (unix:///path/to/redis.sock?db=0, as
     * redis-py writes them; redis+socket:///path?virtual_host=0, as kombu does).
     *
     * @return array<string, mixed>|false
     */
    private static function urlParts(string $url): array|false
    {
        if (preg_match('{^(unix|redis\+socket)://(?:([^:@/]*)(?::([^@/]*))?@)?(/[^?#]*)(?:\?([^#]*))?$}i', $url, $m) !== 1) {
            return parse_url($url);
        }
        return array_filter(
            ['scheme' => $m[1], 'user' => $m[2], 'pass' => $m[3] ?? '', 'path' => $m[4], 'query' => $m[5] ?? ''],
            static fn (string $part): bool => $part !== '',
        );
    }

    /**
     * The URL for messages: everything between '://' and its LAST '@' may hold a secret, so
     * all of it is hidden, whatever parse_url() makes of it (a password with an unencoded
     * '/', '#', '?' or '@' can make it fail, or split it at the wrong '@').
     */
    private static function withoutPassword(string $url): string
    {
        $at = strrpos($url, '@');
        if ($at === false) {
            return $url;
        }
        $scheme = strpos($url, '://');
        $start = $scheme !== false && $scheme < $at ? $scheme + 3 : 0;
        return substr($url, 0, $start) . '***' . substr($url, $at);
    }

    private static function uuid4(): string
    {
        $bytes = random_bytes(16);
        $bytes[6] = chr((ord($bytes[6]) & 0x0f) | 0x40);
        $bytes[8] = chr((ord($bytes[8]) & 0x3f) | 0x80);
        return vsprintf('%s%s-%s-%s-%s-%s%s%s', str_split(bin2hex($bytes), 4));
    }

    private static function json(mixed $value): string
    {
        try {
            return json_encode($value, JSON_UNESCAPED_SLASHES | JSON_THROW_ON_ERROR);
        } catch (\JsonException $error) {
            throw new \InvalidArgumentException('cannot send this as JSON: ' . $error->getMessage() . ' (names must be UTF-8)');
        }
    }

    /** A Python literal of a JSON-able value, as Celery's argsrepr and kwargsrepr are. */
    private static function pythonRepr(mixed $value): string
    {
        if ($value === null) {
            return 'None';
        }
        if (is_bool($value)) {
            return $value ? 'True' : 'False';
        }
        if (is_int($value) || is_float($value)) {
            return (string) $value;
        }
        if (is_string($value)) {
            $escaped = preg_replace_callback(
                '/[\x00-\x1f\x7f\\\\\']/',
                static fn (array $match): string => match ($match[0]) {
                    '\\' => '\\\\',
                    "'" => "\\'",
                    default => sprintf('\\x%02x', ord($match[0])),
                },
                $value,
            );
            return "'" . $escaped . "'";
        }
        if ($value instanceof \stdClass) {
            $value = (array) $value;
            $items = [];
            foreach ($value as $key => $item) {
                $items[] = self::pythonRepr((string) $key) . ': ' . self::pythonRepr($item);
            }
            return '{' . implode(', ', $items) . '}';
        }
        if (is_array($value)) {
            return '[' . implode(', ', array_map([self::class, 'pythonRepr'], $value)) . ']';
        }
        return self::pythonRepr(get_debug_type($value));
    }
}
