<?php
/*
 * A small SMM panel's API v2 endpoint, written like a CodeIgniter 3 application left in
 * development mode, for the tracker's tests (tests/support/php_panel.py starts it with
 * `php -n -S`: PHP's built-in defaults, display_errors on, output_buffering off).
 *
 * Nothing here prints a diagnostic on purpose: PHP itself raises them, as it does for
 * the real panels this stands for.
 *   - The core classes create properties they never declared: E_DEPRECATED "Creation
 *     of dynamic property ... is deprecated" (PHP 8.2), printed before anything else.
 *   - That output means the headers are gone: header() then raises "Cannot modify header
 *     information - headers already sent", and the session library's ini_set() and
 *     session_start() raise their "after headers have already been sent" warnings.
 *   - A wrong key reads an offset of null: "Trying to access array offset on value of
 *     type null", then the panel answers {"error":"Invalid API key"}.
 *   - With "shutdown_header" set, a shutdown function sends one more header: a warning
 *     after the JSON.
 *
 * State lives in the directory named by PHP_PANEL_STATE: config.json (the accepted key,
 * the error view, the options above), orders.json (the orders and their timelines, and
 * "started_at") and refills.json (refills created), and calls.log (one line per call).
 */

require __DIR__ . '/panel/errors.php';
require __DIR__ . '/panel/core.php';
require __DIR__ . '/panel/api.php';

$state_dir = getenv('PHP_PANEL_STATE');
$config = panel_read_json($state_dir . '/config.json');
if (($config['errors'] ?? 'codeigniter') === 'codeigniter') {
    set_error_handler('_panel_error_handler');
}

$panel = new Panel_Controller($state_dir, $config);
$panel->run();
