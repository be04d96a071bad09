<?php
/*
 * CodeIgniter 3's way of showing a PHP error in development mode: its error handler
 * renders every diagnostic as an "A PHP Error was encountered" block, names the levels it
 * knows and prints the others as numbers (8192 for E_DEPRECATED), and lets the script
 * carry on unless the error is fatal.
 */

function _panel_level_name(int $severity): string
{
    $names = [
        E_ERROR => 'Error', E_WARNING => 'Warning', E_PARSE => 'Parsing Error',
        E_NOTICE => 'Notice', E_CORE_ERROR => 'Core Error', E_CORE_WARNING => 'Core Warning',
        E_COMPILE_ERROR => 'Compile Error', E_COMPILE_WARNING => 'Compile Warning',
        E_USER_ERROR => 'User Error', E_USER_WARNING => 'User Warning',
        E_USER_NOTICE => 'User Notice', E_STRICT => 'Runtime Notice',
    ];
    return $names[$severity] ?? (string) $severity;
}

function _panel_error_handler(int $severity, string $message, string $file, int $line): bool
{
    $fatal = ((E_ERROR | E_PARSE | E_COMPILE_ERROR | E_CORE_ERROR | E_USER_ERROR) & $severity) === $severity;
    if (($severity & error_reporting()) !== $severity) {
        return true;
    }
    $parts = explode('/', str_replace('\\', '/', $file));
    $short = count($parts) > 1 ? $parts[count($parts) - 2] . '/' . end($parts) : $file;
    echo "\n<div style=\"border:1px solid #990000;padding-left:20px;margin:0 0 10px 0;\">\n\n";
    echo "<h4>A PHP Error was encountered</h4>\n\n";
    echo '<p>Severity: ' . _panel_level_name($severity) . "</p>\n";
    echo '<p>Message:  ' . $message . "</p>\n";
    echo '<p>Filename: ' . $short . "</p>\n";
    echo '<p>Line Number: ' . $line . "</p>\n\n";
    echo "\t<p>Backtrace:</p>\n";
    foreach (debug_backtrace() as $frame) {
        if (!isset($frame['file'])) {
            continue;
        }
        echo "\t\t\t<p style=\"margin-left:10px\">\n";
        echo "\t\t\tFile: " . $frame['file'] . "<br />\n";
        echo "\t\t\tLine: " . $frame['line'] . "<br />\n";
        echo "\t\t\tFunction: " . $frame['function'] . "\t\t\t</p>\n\n";
    }
    echo "\n</div>";
    if ($fatal) {
        exit(1);
    }
    return true;
}
