<?php
/*
 * The API v2 controller: services, add, status (order= / orders=), refill, refill_status
 * (refill= / refills=) and balance, as the panels' own documentation shows them.
 *
 * With "single_forms" set it reads only order= and refill=, as the MSM "SMM Script"
 * panels do ($_POST["order"], no fallback): a batch (orders= / refills=) looks up
 * nothing, PHP warns "Undefined array key", and the answer is "Order not found." /
 * "Refill not found", one ID or a hundred.
 *
 * An order's status follows its timeline in orders.json, counted from its "created_at":
 * Pending for "pending_s" seconds, then In progress (remains going down) for
 * "progress_s" seconds, then its "final" status (Completed, Partial or Canceled). A
 * refill is Pending for a second, In progress for another, then Completed.
 */

class Panel_Controller
{
    private string $state_dir;
    private array $settings;

    public function __construct(string $state_dir, array $settings)
    {
        $this->state_dir = $state_dir;
        $this->settings = $settings;
        $this->config = new Panel_Config($settings);  // dynamic property
        $this->uri = new Panel_URI($this->config);
        $this->input = new Panel_Input();
        $this->output = new Panel_Output();
    }

    public function run(): void
    {
        if (!empty($this->settings['shutdown_header'])) {
            register_shutdown_function(function (): void {
                header('X-Panel-Elapsed: ' . round(microtime(true) - $_SERVER['REQUEST_TIME_FLOAT'], 4));
            });
        }
        $this->session = new Panel_Session($this->config);
        $action = $this->input->post('action') ?? '';
        $this->log_call($action);

        $accounts = [$this->settings['api_key'] => ['balance' => '100.84292', 'currency' => 'USD']];
        $account = $accounts[$this->input->post('key') ?? ''] ?? null;
        $balance = $account['balance'];  // null account: "Trying to access array offset"
        if ($account === null) {
            $this->output->json(['error' => 'Invalid API key']);
            return;
        }
        $handlers = [
            'services' => 'services', 'add' => 'add', 'status' => 'status', 'refill' => 'refill',
            'refill_status' => 'refill_status', 'balance' => 'balance',
        ];
        if (!isset($handlers[$action])) {
            $this->output->json(['error' => 'Incorrect request']);
            return;
        }
        $this->output->json($this->{$handlers[$action]}($balance, $account['currency']));
    }

    private function log_call(string $action): void
    {
        $line = sprintf("%.6f %s\n", microtime(true), preg_replace('/[^a-z_]/', '', $action));
        file_put_contents($this->state_dir . '/calls.log', $line, FILE_APPEND | LOCK_EX);
    }

    private function services(): array
    {
        return [
            ['service' => 1, 'name' => 'Followers', 'type' => 'Default', 'category' => 'First Category',
             'rate' => '0.90', 'min' => '50', 'max' => '10000', 'refill' => true, 'cancel' => true],
            ['service' => 2, 'name' => 'Comments', 'type' => 'Custom Comments', 'category' => 'Second Category',
             'rate' => '8', 'min' => '10', 'max' => '1500', 'refill' => false, 'cancel' => true],
        ];
    }

    private function balance(string $balance, string $currency): array
    {
        return ['balance' => $balance, 'currency' => $currency];
    }

    private function add(): array
    {
        $service = (int) $this->input->post('service');
        $quantity = (int) $this->input->post('quantity');
        if (!in_array($service, [1, 2], true) || $quantity <= 0 || !$this->input->post('link')) {
            return ['error' => 'Incorrect request'];
        }
        $id = panel_update_json($this->state_dir . '/orders.json', function (array &$data) use ($service, $quantity) {
            $ids = array_map('intval', array_keys($data['orders'] ?? []));
            $id = ($ids ? max($ids) : 0) + 1;
            $data['orders'][(string) $id] = [
                'service' => $service, 'quantity' => $quantity, 'charge' => sprintf('%.5f', $quantity * 0.0009),
                'start_count' => 100, 'pending_s' => 2, 'progress_s' => 5, 'final' => 'Completed',
                'created_at' => microtime(true),
            ];
            return $id;
        });
        return ['order' => $id];
    }

    private function orders(): array
    {
        return panel_read_json($this->state_dir . '/orders.json')['orders'] ?? [];
    }

    private function order_state(array $order): array
    {
        $age = microtime(true) - $order['created_at'];
        $quantity = $order['quantity'];
        $status = 'Pending';
        $remains = $quantity;
        $charge = $order['charge'];
        if ($age >= $order['pending_s'] + $order['progress_s']) {
            $status = $order['final'];
            $remains = ['Completed' => 0, 'Partial' => $order['partial_remains'] ?? intdiv($quantity, 3),
                        'Canceled' => $quantity][$status];
            if ($status === 'Canceled') {
                $charge = '0';
            }
        } elseif ($age >= $order['pending_s']) {
            $status = 'In progress';
            $done = ($age - $order['pending_s']) / $order['progress_s'];
            $remains = max(1, $quantity - (int) floor($quantity * $done));
        }
        return [
            'charge' => $charge, 'start_count' => (string) $order['start_count'], 'status' => $status,
            'remains' => (string) $remains, 'currency' => 'USD',
        ];
    }

    private function status(): array
    {
        $orders = $this->orders();
        if (!empty($this->settings['single_forms'])) {
            $id = $_POST['order'];
            return isset($orders[$id]) ? $this->order_state($orders[$id]) : ['error' => 'Order not found.'];
        }
        $single = $this->input->post('order');
        if ($single !== null) {
            return isset($orders[$single]) ? $this->order_state($orders[$single]) : ['error' => 'Incorrect order ID'];
        }
        $answer = [];
        foreach (array_slice(explode(',', $this->input->post('orders') ?? ''), 0, 100) as $id) {
            $id = trim($id);
            $answer[$id] = isset($orders[$id]) ? $this->order_state($orders[$id]) : ['error' => 'Incorrect order ID'];
        }
        return $answer;
    }

    private function refill(): array
    {
        $order_id = $this->input->post('order') ?? '';
        $order = $this->orders()[$order_id] ?? null;
        if ($order === null) {
            return ['error' => 'Incorrect order ID'];
        }
        if ($order['service'] !== 1 || $this->order_state($order)['status'] !== 'Completed') {
            return ['error' => 'Refill is disabled for this order'];
        }
        $id = panel_update_json($this->state_dir . '/refills.json', function (array &$refills) use ($order_id) {
            $id = count($refills) + 1;
            $refills[(string) $id] = ['order' => (int) $order_id, 'created_at' => microtime(true)];
            return $id;
        });
        return ['refill' => (string) $id];
    }

    private function refill_state(?array $refill)
    {
        if ($refill === null) {
            return ['error' => 'Refill not found'];
        }
        $age = microtime(true) - $refill['created_at'];
        return $age < 1 ? 'Pending' : ($age < 2 ? 'In progress' : 'Completed');
    }

    private function refill_status(): array
    {
        $refills = panel_read_json($this->state_dir . '/refills.json');
        if (!empty($this->settings['single_forms'])) {
            $id = $_POST['refill'];
            $state = isset($refills[$id]) ? $this->refill_state($refills[$id]) : ['error' => 'Refill not found'];
            return is_array($state) ? $state : ['status' => $state];
        }
        $single = $this->input->post('refill');
        if ($single !== null) {
            $state = $this->refill_state($refills[$single] ?? null);
            return is_array($state) ? $state : ['status' => $state];
        }
        $answer = [];
        foreach (array_slice(explode(',', $this->input->post('refills') ?? ''), 0, 100) as $id) {
            $id = trim($id);
            $answer[] = ['refill' => preg_match('/^\d+$/', $id) ? (int) $id : $id, 'status' => $this->refill_state($refills[$id] ?? null)];
        }
        return $answer;
    }
}
