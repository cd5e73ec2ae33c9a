-- The shop's schema, applied by shop.init_db() at every start. Idempotent: every
-- statement is IF NOT EXISTS, so running it again on a current database changes
-- nothing. A fresh database gets this file and PRAGMA user_version set to
-- shop.SCHEMA_VERSION; an older one first runs the numbered migrations in
-- shop.MIGRATIONS, then this file (for new tables and indexes).
--
-- Conventions: money is integer cents (*_cents), times are UTC ISO-8601 text
-- ('2026-11-26T10:34:54Z'), flags are 0/1 integers, statuses are CHECKed text.

-- Shoppers. The primary key is the Telegram user id, which is also the id of
-- their private chat with the bot.
CREATE TABLE IF NOT EXISTS users (
    id              INTEGER PRIMARY KEY,
    username        TEXT,
    first_name      TEXT NOT NULL DEFAULT '',
    language_code   TEXT,
    -- The language the shopper chose (/language, the Mini App), a code of a catalog under
    -- locales/; NULL: Telegram's language_code, else the shop's default language.
    language        TEXT,
    -- Cached sum of the user's ledger rows; updated in the same transaction as
    -- every ledger insert and checked by shop.check_ledger().
    balance_cents   INTEGER NOT NULL DEFAULT 0 CHECK (balance_cents >= 0),
    is_banned       INTEGER NOT NULL DEFAULT 0 CHECK (is_banned IN (0, 1)),
    ban_notified_at TEXT,
    -- What the bot asked this user to type next (e.g. 'topup_amount'), or NULL.
    awaiting        TEXT,
    created_at      TEXT NOT NULL,
    last_seen_at    TEXT NOT NULL
);

CREATE INDEX IF NOT EXISTS users_username ON users(username COLLATE NOCASE);

CREATE TABLE IF NOT EXISTS cities (
    id        INTEGER PRIMARY KEY,
    name      TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 64),
    position  INTEGER NOT NULL DEFAULT 0,
    is_hidden INTEGER NOT NULL DEFAULT 0 CHECK (is_hidden IN (0, 1))
);

CREATE TABLE IF NOT EXISTS districts (
    id        INTEGER PRIMARY KEY,
    city_id   INTEGER NOT NULL REFERENCES cities(id),
    name      TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    position  INTEGER NOT NULL DEFAULT 0,
    is_hidden INTEGER NOT NULL DEFAULT 0 CHECK (is_hidden IN (0, 1)),
    UNIQUE (city_id, name)
);

CREATE TABLE IF NOT EXISTS products (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 64),
    description   TEXT NOT NULL DEFAULT '' CHECK (length(description) <= 800),
    price_cents   INTEGER NOT NULL CHECK (price_cents > 0),
    -- Public product photo: a file name inside MEDIA_DIR/public.
    photo         TEXT,
    is_active     INTEGER NOT NULL DEFAULT 1 CHECK (is_active IN (0, 1)),
    created_at    TEXT NOT NULL,
    -- What the product is: Telegram's rule says digital goods are paid in Stars. NULL: not said
    -- (a product from before kinds existed), sold as before.
    kind          TEXT CHECK (kind IN ('digital', 'physical')),
    -- The ways it may be paid, comma-separated from shop.PAY_METHODS; NULL: every way.
    pay_methods   TEXT,
    -- Its own price in Telegram Stars; NULL: the euro price at the shop's rate, rounded up.
    stars_price   INTEGER CHECK (stars_price IS NULL OR stars_price BETWEEN 1 AND 100000),
    -- The name and description in other languages: JSON {"de": {"name": ..., "description":
    -- ...}, ...}; name and description above are the shop's default language's. NULL: none.
    translations  TEXT CHECK (translations IS NULL OR json_valid(translations))
);

-- One sellable item with its own delivery content. The content and media are
-- the goods: they leave the shop only towards the buyer.
CREATE TABLE IF NOT EXISTS stock_units (
    id             INTEGER PRIMARY KEY,
    product_id     INTEGER NOT NULL REFERENCES products(id),
    district_id    INTEGER NOT NULL REFERENCES districts(id),
    content        TEXT NOT NULL CHECK (length(content) BETWEEN 1 AND 3500),
    -- Private media: a file name inside MEDIA_DIR/private, never served publicly.
    media          TEXT,
    status         TEXT NOT NULL DEFAULT 'available'
                   CHECK (status IN ('available', 'reserved', 'sold')),
    order_id       INTEGER REFERENCES orders(id),
    reserved_until TEXT,
    sold_at        TEXT,
    created_at     TEXT NOT NULL,
    CHECK ((status = 'available') = (order_id IS NULL)),
    CHECK ((status = 'reserved') = (reserved_until IS NOT NULL))
);
-- Units on sale, so browsing costs what is in stock, not what was ever sold.
CREATE INDEX IF NOT EXISTS stock_units_available
    ON stock_units(district_id, product_id) WHERE status = 'available';
CREATE INDEX IF NOT EXISTS stock_units_product ON stock_units(product_id, status);
CREATE INDEX IF NOT EXISTS stock_units_order ON stock_units(order_id) WHERE order_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS stock_units_reserved
    ON stock_units(reserved_until) WHERE status = 'reserved';
CREATE INDEX IF NOT EXISTS stock_units_dedupe
    ON stock_units(product_id, district_id, content);

CREATE TABLE IF NOT EXISTS basket_items (
    id          INTEGER PRIMARY KEY,
    user_id     INTEGER NOT NULL REFERENCES users(id),
    product_id  INTEGER NOT NULL REFERENCES products(id),
    district_id INTEGER NOT NULL REFERENCES districts(id),
    quantity    INTEGER NOT NULL CHECK (quantity BETWEEN 1 AND 100),
    added_at    TEXT NOT NULL,
    UNIQUE (user_id, product_id, district_id)
);

CREATE TABLE IF NOT EXISTS orders (
    id             INTEGER PRIMARY KEY,
    user_id        INTEGER NOT NULL REFERENCES users(id),
    status         TEXT NOT NULL
                   CHECK (status IN ('pending', 'paid', 'cancelled', 'expired', 'refunded')),
    total_cents    INTEGER NOT NULL CHECK (total_cents > 0),
    payment_method TEXT NOT NULL CHECK (payment_method IN ('balance', 'crypto', 'stars')),
    -- The checkout screen (chat:message) this order was placed from: a replayed
    -- or double-tapped "Pay" button finds the existing order instead of buying twice.
    checkout_key   TEXT,
    created_at     TEXT NOT NULL,
    paid_at        TEXT,
    CHECK ((status = 'paid') <= (paid_at IS NOT NULL))
);
CREATE INDEX IF NOT EXISTS orders_user ON orders(user_id, id);
CREATE INDEX IF NOT EXISTS orders_status ON orders(status, id);
CREATE UNIQUE INDEX IF NOT EXISTS orders_checkout ON orders(user_id, checkout_key)
    WHERE checkout_key IS NOT NULL;

-- One row per unit sold (or reserved) in an order, with the names and price as
-- they were at the time of sale.
CREATE TABLE IF NOT EXISTS order_items (
    id            INTEGER PRIMARY KEY,
    order_id      INTEGER NOT NULL REFERENCES orders(id),
    unit_id       INTEGER NOT NULL REFERENCES stock_units(id),
    product_id    INTEGER NOT NULL REFERENCES products(id),
    product_name  TEXT NOT NULL,
    place_name    TEXT NOT NULL,
    price_cents   INTEGER NOT NULL CHECK (price_cents > 0)
);
CREATE INDEX IF NOT EXISTS order_items_order ON order_items(order_id);
CREATE INDEX IF NOT EXISTS order_items_unit ON order_items(unit_id);

-- Append-only. Every balance change is one row; the idempotency key makes
-- replaying an event (an IPN, a retried job) a no-op.
CREATE TABLE IF NOT EXISTS ledger (
    id              INTEGER PRIMARY KEY,
    user_id         INTEGER NOT NULL REFERENCES users(id),
    amount_cents    INTEGER NOT NULL CHECK (amount_cents <> 0),
    balance_after_cents INTEGER NOT NULL CHECK (balance_after_cents >= 0),
    kind            TEXT NOT NULL CHECK (kind IN
                    ('topup', 'purchase', 'refund', 'adjustment', 'underpayment',
                     'overpayment', 'late_payment', 'repeat_deposit')),
    reason          TEXT NOT NULL DEFAULT '',
    idempotency_key TEXT NOT NULL UNIQUE,
    order_id        INTEGER REFERENCES orders(id),
    created_at      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_user ON ledger(user_id, id);
CREATE INDEX IF NOT EXISTS ledger_order ON ledger(order_id) WHERE order_id IS NOT NULL;

CREATE TRIGGER IF NOT EXISTS ledger_append_only_update BEFORE UPDATE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS ledger_append_only_delete BEFORE DELETE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;

-- Telegram messages to send, committed with the state change that caused them.
-- The sender sends them in id order per chat and marks each sent or failed.
CREATE TABLE IF NOT EXISTS outbox (
    id              INTEGER PRIMARY KEY,
    chat_id         INTEGER NOT NULL,
    text            TEXT NOT NULL DEFAULT '',
    -- 'public:<file>' or 'private:<file>' inside MEDIA_DIR; sent as a photo with
    -- text as its caption.
    photo           TEXT,
    reply_markup    TEXT,
    status          TEXT NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'sent', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    last_error      TEXT,
    order_id        INTEGER REFERENCES orders(id),
    created_at      TEXT NOT NULL,
    sent_at         TEXT,
    telegram_message_id INTEGER,
    -- Set instead of text: edit that message's caption to show the payment's invoice as it is now.
    edit_message_id INTEGER,
    payment_id      INTEGER REFERENCES payments(id),
    broadcast_id    INTEGER REFERENCES broadcasts(id)
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(chat_id, id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS outbox_order ON outbox(order_id) WHERE order_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS outbox_sent ON outbox(sent_at) WHERE status = 'sent';
CREATE INDEX IF NOT EXISTS outbox_failed ON outbox(id) WHERE status = 'failed';
CREATE INDEX IF NOT EXISTS outbox_broadcast ON outbox(broadcast_id, status) WHERE broadcast_id IS NOT NULL;

-- Telegram file_ids of photos already uploaded, so each file is uploaded once
-- per bot (file_ids are only valid for the bot that received them).
CREATE TABLE IF NOT EXISTS telegram_files (
    photo   TEXT NOT NULL,
    bot_id  INTEGER NOT NULL,
    file_id TEXT NOT NULL,
    PRIMARY KEY (photo, bot_id)
);

CREATE TABLE IF NOT EXISTS settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- A checkout screen as the shopper saw it: what is being bought (or the top-up
-- amount) and for how much. Buttons carry only its nonce; paying twice from the
-- same screen finds the same order or payment.
CREATE TABLE IF NOT EXISTS checkouts (
    nonce        TEXT PRIMARY KEY,
    user_id      INTEGER NOT NULL REFERENCES users(id),
    kind         TEXT NOT NULL CHECK (kind IN ('order', 'topup')),
    lines        TEXT NOT NULL DEFAULT '[]',   -- JSON [[product_id, district_id, quantity]]
    from_basket  INTEGER NOT NULL DEFAULT 0 CHECK (from_basket IN (0, 1)),
    amount_cents INTEGER NOT NULL CHECK (amount_cents > 0),
    created_at   TEXT NOT NULL,
    -- Set while a top-up's invoice is being made (the provider has not answered yet), so it counts
    -- against the shopper's invoice limits like an open one; cleared when the payment is recorded.
    invoicing_since TEXT
);
CREATE INDEX IF NOT EXISTS checkouts_created ON checkouts(created_at);
CREATE INDEX IF NOT EXISTS checkouts_invoicing ON checkouts(user_id, invoicing_since)
    WHERE invoicing_since IS NOT NULL;

-- One row per NOWPayments payment, bound at creation to its order or top-up,
-- its EUR price and its coin. Crypto amounts are decimal strings exactly as the
-- provider wrote them.
CREATE TABLE IF NOT EXISTS payments (
    id             INTEGER PRIMARY KEY,
    provider       TEXT NOT NULL DEFAULT 'nowpayments',   -- a name in shop.py's PAYMENT_PROVIDERS
    provider_id    TEXT NOT NULL,                     -- the provider's own id for the payment
    kind           TEXT NOT NULL CHECK (kind IN ('order', 'topup')),
    user_id        INTEGER NOT NULL REFERENCES users(id),
    order_id       INTEGER REFERENCES orders(id),
    parent_id      INTEGER REFERENCES payments(id),   -- a repeated deposit to this payment's address
    reference      TEXT NOT NULL,                     -- the order_id we gave the provider
    price_cents    INTEGER NOT NULL CHECK (price_cents > 0),
    pay_currency   TEXT NOT NULL,
    pay_amount     TEXT NOT NULL,
    pay_address    TEXT NOT NULL DEFAULT '',
    payin_extra_id TEXT,
    actually_paid  TEXT,
    status         TEXT NOT NULL CHECK (status IN ('waiting', 'confirming', 'confirmed', 'sending',
                   'partially_paid', 'finished', 'failed', 'refunded', 'expired')),
    -- What the shop did when the payment became final, e.g. 'delivered', 'credited'.
    outcome        TEXT,
    credited_cents INTEGER NOT NULL DEFAULT 0,
    expires_at     TEXT NOT NULL,
    seen_notified  INTEGER NOT NULL DEFAULT 0 CHECK (seen_notified IN (0, 1)),
    stuck_alerted  INTEGER NOT NULL DEFAULT 0 CHECK (stuck_alerted IN (0, 1)),
    invoice_message_id INTEGER,     -- the bot message showing this invoice, kept up to date
    final_source   TEXT,            -- 'ipn', 'poll', 'check' or 'admin': what made it final
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    final_at       TEXT,
    -- Telegram Stars: the telegram_payment_charge_id of the money received (the key for refunds).
    charge_id      TEXT,
    CHECK ((kind = 'order') = (order_id IS NOT NULL)),
    UNIQUE (provider, provider_id)
);
CREATE UNIQUE INDEX IF NOT EXISTS payments_charge ON payments(charge_id) WHERE charge_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS payments_open ON payments(created_at)
    WHERE status IN ('waiting', 'confirming', 'confirmed', 'sending');
CREATE INDEX IF NOT EXISTS payments_user ON payments(user_id, created_at);
CREATE INDEX IF NOT EXISTS payments_final
    ON payments(final_at, status, final_source, parent_id) WHERE final_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS payments_order ON payments(order_id) WHERE order_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS payments_parent ON payments(parent_id) WHERE parent_id IS NOT NULL;

-- Telegram Stars given back: one row per charge (so a charge is refunded at most once), made in
-- the transaction that decided it and sent to Telegram (refundStarPayment) after it, with retries.
CREATE TABLE IF NOT EXISTS star_refunds (
    charge_id       TEXT PRIMARY KEY,                   -- telegram_payment_charge_id
    user_id         INTEGER NOT NULL,
    payment_id      INTEGER REFERENCES payments(id),    -- NULL: a charge the shop knows nothing of
    stars           INTEGER NOT NULL CHECK (stars > 0),
    reason          TEXT NOT NULL,
    requested_by    TEXT NOT NULL CHECK (requested_by IN ('shop', 'owner')),
    status          TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    next_attempt_at TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    done_at         TEXT
);
CREATE INDEX IF NOT EXISTS star_refunds_pending ON star_refunds(next_attempt_at) WHERE status = 'pending';

-- Every IPN as it arrived, with what the shop made of it.
CREATE TABLE IF NOT EXISTS ipn_events (
    id          INTEGER PRIMARY KEY,
    received_at TEXT NOT NULL,
    provider_id TEXT,
    status      TEXT,
    body        TEXT NOT NULL,
    signature   TEXT,
    verdict     TEXT NOT NULL,
    remote_addr TEXT,
    refused     INTEGER NOT NULL DEFAULT 0 CHECK (refused IN (0, 1)),  -- only the latest 1000 are kept
    provider    TEXT           -- whose webhook: a name in shop.py's PAYMENT_PROVIDERS
);
CREATE INDEX IF NOT EXISTS ipn_events_payment ON ipn_events(provider_id, id);
CREATE INDEX IF NOT EXISTS ipn_events_refused ON ipn_events(id) WHERE refused = 1;

-- The sandbox's NOWPayments emulator keeps its payments here (JSON as the API returns them).
CREATE TABLE IF NOT EXISTS sandbox_payments (
    id   INTEGER PRIMARY KEY,
    data TEXT NOT NULL
);

-- The owner's admin sessions: only a hash of each cookie's token is kept.
CREATE TABLE IF NOT EXISTS admin_sessions (
    token_hash   TEXT PRIMARY KEY,
    csrf_token   TEXT NOT NULL,
    flash        TEXT,               -- a message for the next page (the result of the last action)
    remote_addr  TEXT,
    created_at   TEXT NOT NULL,
    last_seen_at TEXT NOT NULL
);

-- Everything done in the admin, with when, what and from where.
CREATE TABLE IF NOT EXISTS audit_log (
    id          INTEGER PRIMARY KEY,
    at          TEXT NOT NULL,
    action      TEXT NOT NULL,
    details     TEXT NOT NULL DEFAULT '',
    remote_addr TEXT
);
CREATE INDEX IF NOT EXISTS audit_log_at ON audit_log(at);

-- A message to every shopper; its outbox rows carry its id.
CREATE TABLE IF NOT EXISTS broadcasts (
    id         INTEGER PRIMARY KEY,
    text       TEXT NOT NULL,
    photo      TEXT,
    recipients INTEGER NOT NULL,
    created_at TEXT NOT NULL
);

-- Per UTC day: paid orders and their revenue, and payments by how they ended. Triggers keep them
-- exact through every change of an order or payment, so the dashboard reads 30 rows per table
-- however many orders the shop has taken (a refund takes an order out of its day's revenue).
CREATE TABLE IF NOT EXISTS daily_sales (
    day           TEXT PRIMARY KEY,          -- YYYY-MM-DD of paid_at
    orders        INTEGER NOT NULL,
    revenue_cents INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS daily_sales_insert AFTER INSERT ON orders WHEN NEW.status = 'paid'
BEGIN
    INSERT INTO daily_sales(day, orders, revenue_cents) VALUES (substr(NEW.paid_at, 1, 10), 1, NEW.total_cents)
        ON CONFLICT(day) DO UPDATE SET orders = orders + 1, revenue_cents = revenue_cents + excluded.revenue_cents;
END;
CREATE TRIGGER IF NOT EXISTS daily_sales_update AFTER UPDATE OF status, paid_at, total_cents ON orders
    WHEN OLD.status = 'paid' OR NEW.status = 'paid'
BEGIN
    UPDATE daily_sales SET orders = orders - 1, revenue_cents = revenue_cents - OLD.total_cents
        WHERE OLD.status = 'paid' AND day = substr(OLD.paid_at, 1, 10);
    INSERT INTO daily_sales(day, orders, revenue_cents)
        SELECT substr(NEW.paid_at, 1, 10), 1, NEW.total_cents WHERE NEW.status = 'paid'
        ON CONFLICT(day) DO UPDATE SET orders = orders + 1, revenue_cents = revenue_cents + excluded.revenue_cents;
END;
CREATE TRIGGER IF NOT EXISTS daily_sales_delete AFTER DELETE ON orders WHEN OLD.status = 'paid'
BEGIN
    UPDATE daily_sales SET orders = orders - 1, revenue_cents = revenue_cents - OLD.total_cents
        WHERE day = substr(OLD.paid_at, 1, 10);
END;

CREATE TABLE IF NOT EXISTS daily_payments (
    day      TEXT NOT NULL,                  -- YYYY-MM-DD of final_at
    status   TEXT NOT NULL,
    source   TEXT NOT NULL,                  -- final_source, '' when none
    is_child INTEGER NOT NULL,               -- a repeated deposit (parent_id set)
    payments INTEGER NOT NULL,
    PRIMARY KEY (day, status, source, is_child)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS daily_payments_insert AFTER INSERT ON payments WHEN NEW.final_at IS NOT NULL
BEGIN
    INSERT INTO daily_payments VALUES (substr(NEW.final_at, 1, 10), NEW.status, coalesce(NEW.final_source, ''),
                                       NEW.parent_id IS NOT NULL, 1)
        ON CONFLICT DO UPDATE SET payments = payments + 1;
END;
CREATE TRIGGER IF NOT EXISTS daily_payments_update
    AFTER UPDATE OF final_at, status, final_source, parent_id ON payments
    WHEN OLD.final_at IS NOT NULL OR NEW.final_at IS NOT NULL
BEGIN
    UPDATE daily_payments SET payments = payments - 1
        WHERE OLD.final_at IS NOT NULL AND day = substr(OLD.final_at, 1, 10) AND status = OLD.status
          AND source = coalesce(OLD.final_source, '') AND is_child = (OLD.parent_id IS NOT NULL);
    INSERT INTO daily_payments
        SELECT substr(NEW.final_at, 1, 10), NEW.status, coalesce(NEW.final_source, ''), NEW.parent_id IS NOT NULL, 1
        WHERE NEW.final_at IS NOT NULL
        ON CONFLICT DO UPDATE SET payments = payments + 1;
END;
CREATE TRIGGER IF NOT EXISTS daily_payments_delete AFTER DELETE ON payments WHEN OLD.final_at IS NOT NULL
BEGIN
    UPDATE daily_payments SET payments = payments - 1
        WHERE day = substr(OLD.final_at, 1, 10) AND status = OLD.status
          AND source = coalesce(OLD.final_source, '') AND is_child = (OLD.parent_id IS NOT NULL);
END;


-- Moves with every change to what the catalog shows (places, products, units and their status), so
-- the Mini App's catalog is built once per change and served from memory in between.
CREATE TABLE IF NOT EXISTS catalog_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT OR IGNORE INTO catalog_version VALUES (1, 0);
CREATE TRIGGER IF NOT EXISTS catalog_version_cities_insert AFTER INSERT ON cities
    BEGIN UPDATE catalog_version SET version = version + 1; END;
CREATE TRIGGER IF NOT EXISTS catalog_version_cities_update AFTER UPDATE ON cities
    BEGIN UPDATE catalog_version SET version = version + 1; END;
CREATE TRIGGER IF NOT EXISTS catalog_version_cities_delete AFTER DELETE ON cities
    BEGIN UPDATE catalog_version SET version = version + 1; END;
CREATE TRIGGER IF NOT EXISTS catalog_version_districts_insert AFTER INSERT ON districts
    BEGIN UPDATE catalog_version SET version = version + 1; END;
CREATE TRIGGER IF NOT EXISTS catalog_version_districts_update AFTER UPDATE ON districts
    BEGIN UPDATE catalog_version SET version = version + 1; END;
CREATE TRIGGER IF NOT EXISTS catalog_version_districts_delete AFTER DELETE ON districts
    BEGIN UPDATE catalog_version SET version = version + 1; END;
CREATE TRIGGER IF NOT EXISTS catalog_version_products_insert AFTER INSERT ON products
    BEGIN UPDATE catalog_version SET version = version + 1; END;
CREATE TRIGGER IF NOT EXISTS catalog_version_products_update AFTER UPDATE ON products
    BEGIN UPDATE catalog_version SET version = version + 1; END;
CREATE TRIGGER IF NOT EXISTS catalog_version_products_delete AFTER DELETE ON products
    BEGIN UPDATE catalog_version SET version = version + 1; END;
CREATE TRIGGER IF NOT EXISTS catalog_version_stock_units_insert AFTER INSERT ON stock_units
    BEGIN UPDATE catalog_version SET version = version + 1; END;
CREATE TRIGGER IF NOT EXISTS catalog_version_stock_units_update AFTER UPDATE ON stock_units
    BEGIN UPDATE catalog_version SET version = version + 1; END;
CREATE TRIGGER IF NOT EXISTS catalog_version_stock_units_delete AFTER DELETE ON stock_units
    BEGIN UPDATE catalog_version SET version = version + 1; END;
-- The Mini App's catalog shows prices in Stars and the ways to pay, which these settings change.
CREATE TRIGGER IF NOT EXISTS catalog_version_settings_insert AFTER INSERT ON settings
    WHEN NEW.key IN ('telegram_rule', 'stars_per_euro')
    BEGIN UPDATE catalog_version SET version = version + 1; END;
CREATE TRIGGER IF NOT EXISTS catalog_version_settings_update AFTER UPDATE ON settings
    WHEN NEW.key IN ('telegram_rule', 'stars_per_euro')
    BEGIN UPDATE catalog_version SET version = version + 1; END;
