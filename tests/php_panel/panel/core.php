<?php
/*
 * The framework part: the classes a CodeIgniter 3 controller gets, written the way PHP 7
 * code was (properties assigned without being declared), and the session library, which
 * sets its ini options and starts the session after the controller was built.
 */

function panel_read_json(string $path): array
{
    $text = @file_get_contents($path);
    $data = $text === false ? null : json_decode($text, true);
    return is_array($data) ? $data : [];
}

/** Read, change and write a JSON file under an exclusive lock (workers run in parallel). */
function panel_update_json(string $path, callable $change)
{
    $handle = fopen($path, 'c+');
    flock($handle, LOCK_EX);
    $text = stream_get_contents($handle);
    $data = json_decode($text === '' ? '{}' : $text, true);
    $result = $change($data);
    ftruncate($handle, 0);
    rewind($handle);
    fwrite($handle, json_encode($data));
    fflush($handle);
    flock($handle, LOCK_UN);
    fclose($handle);
    return $result;
}

class Panel_Config
{
    public function __construct(array $items)
    {
        foreach ($items as $name => $value) {
            $this->$name = $value;  // PHP 8.2: E_DEPRECATED, dynamic property
        }
    }
}

class Panel_URI
{
    public function __construct(Panel_Config $config)
    {
        $this->config = $config;  // "Creation of dynamic property Panel_URI::$config"
        $this->uri_string = parse_url($_SERVER['REQUEST_URI'] ?? '/', PHP_URL_PATH);
    }
}

class Panel_Input
{
    public function post(string $name): ?string
    {
        $value = $_POST[$name] ?? $_GET[$name] ?? null;
        return is_string($value) ? trim($value) : null;
    }
}

class Panel_Output
{
    public function set_content_type(string $type): void
    {
        header('Content-Type: ' . $type);  // output already started: a warning
    }

    public function json(array $answer): void
    {
        $this->set_content_type('application/json');
        echo json_encode($answer);
    }
}

class Panel_Session
{
    public function __construct(Panel_Config $config)
    {
        $this->config = $config;  // dynamic property again
        ini_set('session.use_trans_sid', '0');
        ini_set('session.gc_maxlifetime', '7200');
        session_start();
    }
}
