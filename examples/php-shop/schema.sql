-- The shop's side of the tracker, for MariaDB 10.6+ / MySQL 8: the tables
-- examples/php-shop/webhook.php writes to. Modeled on the SmartPanel family's `orders`
-- and users tables (your panel's names may differ: docs/php-shop.md maps them), plus
-- what the receiver needs to apply each event once:
--   orders.refunded, orders.tracker_observed_at, orders.tracker_event_id, orders.provider_charge,
--   api_providers.tracker_name, and the table tracker_events.
-- Money is DECIMAL, never FLOAT: a refund must come out to the cent every time.

CREATE TABLE users (
  id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  email VARCHAR(191) NOT NULL,
  balance DECIMAL(15,4) NOT NULL DEFAULT 0,
  UNIQUE KEY users_email (email)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE api_providers (
  id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  name VARCHAR(191) NOT NULL,
  url VARCHAR(255) NOT NULL,
  -- The name this provider was registered with in the tracker (`tracker provider add NAME`):
  -- events name their provider by it.
  tracker_name VARCHAR(64) NULL,
  UNIQUE KEY api_providers_tracker_name (tracker_name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE orders (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  uid INT UNSIGNED NOT NULL,                  -- the customer: users.id
  service_id INT UNSIGNED NULL,               -- the shop's own service
  api_provider_id INT UNSIGNED NOT NULL,      -- api_providers.id
  api_service_id INT UNSIGNED NULL,           -- the provider's service ID
  api_order_id BIGINT UNSIGNED NULL,          -- the provider's order ID, once placed
  link VARCHAR(255) NOT NULL DEFAULT '',
  quantity INT UNSIGNED NOT NULL,
  charge DECIMAL(15,4) NOT NULL,              -- what the customer paid: refunds are shares of it
  -- pending, processing, inprogress, completed, partial, canceled, error
  status VARCHAR(20) NOT NULL DEFAULT 'pending',
  start_counter BIGINT NULL,
  remains BIGINT NULL,
  -- Written by the tracker's events:
  provider_charge DECIMAL(20,8) NULL,         -- what the provider charged (in its currency)
  refunded DECIMAL(15,4) NOT NULL DEFAULT 0,  -- credited back to the customer so far
  tracker_observed_at DATETIME(6) NULL,       -- created_at (UTC) of the last event applied
  tracker_event_id CHAR(36) NULL,             -- that event's ID
  created DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
  changed DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  UNIQUE KEY orders_provider_order (api_provider_id, api_order_id),
  KEY orders_uid (uid),
  KEY orders_status (status)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Every event the receiver has handled, by the tracker's event ID: a delivery whose ID is
-- here was applied already (deliveries are at least once) and changes nothing.
CREATE TABLE tracker_events (
  event_id CHAR(36) NOT NULL PRIMARY KEY,
  type VARCHAR(40) NOT NULL,
  order_id BIGINT UNSIGNED NULL,              -- orders.id it was about
  outcome VARCHAR(12) NOT NULL,               -- applied, stale (older than the row), ignored
  refund DECIMAL(15,4) NOT NULL DEFAULT 0,    -- what this event credited
  applied_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  KEY tracker_events_order (order_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
