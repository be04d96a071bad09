<?php
// The example shop's settings: copy to config.php and fill in (webhook.php and
// backfill.php read config.php when it exists, else this file). Each value can also
// come from the environment.
return [
    // The shop's database (PDO DSN), MariaDB or MySQL.
    'db_dsn' => getenv('SHOP_DB_DSN') ?: 'mysql:host=127.0.0.1;dbname=shop;charset=utf8mb4',
    'db_user' => getenv('SHOP_DB_USER') ?: 'shop',
    'db_password' => getenv('SHOP_DB_PASSWORD') ?: '',
    // The tracker's TRACKER_WEBHOOK_SECRET.
    'webhook_secret' => getenv('TRACKER_WEBHOOK_SECRET') ?: '',
    // Where the shop hands orders over: the tracker's TRACKER_BROKER_URL (redis://...), or its
    // Flower (http://host:5555) with FLOWER_BASIC_AUTH's user and password.
    'tracker_url' => getenv('TRACKER_URL') ?: 'redis://127.0.0.1:6379/0',
    'flower_user' => getenv('FLOWER_USER') ?: null,
    'flower_password' => getenv('FLOWER_PASSWORD') ?: null,
    // Where TrackerKit.php is (copy kit/php/TrackerKit.php next to your code).
    'kit' => getenv('TRACKER_KIT') ?: __DIR__ . '/../../kit/php/TrackerKit.php',
];
