<?php
// What webhook.php and backfill.php share: the settings, the kit and the database.
declare(strict_types=1);

/** @return array<string, mixed> */
function shop_config(): array
{
    static $config = null;
    if ($config === null) {
        $config = require (is_file(__DIR__ . '/config.php') ? __DIR__ . '/config.php' : __DIR__ . '/config.sample.php');
        require_once $config['kit'];
    }
    return $config;
}

function shop_db(): PDO
{
    $config = shop_config();
    return new PDO($config['db_dsn'], $config['db_user'], $config['db_password'], [
        PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION,
        PDO::ATTR_DEFAULT_FETCH_MODE => PDO::FETCH_ASSOC,
        // Real server-side statements: amounts travel as exact strings, never as floats.
        PDO::ATTR_EMULATE_PREPARES => false,
    ]);
}
