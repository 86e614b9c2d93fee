-- The push relay: accounts, API keys, devices, whitelist tokens and the
-- durable outbox. Secrets (API keys, whitelist tokens) are stored as SHA-256.

CREATE TABLE relay_accounts (
    id            INTEGER PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    email         TEXT NOT NULL DEFAULT '',
    password_hash TEXT NOT NULL,
    created       INTEGER NOT NULL
);
CREATE UNIQUE INDEX relay_accounts_email ON relay_accounts(email) WHERE email <> '';

CREATE TABLE relay_api_keys (
    hash       BLOB PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES relay_accounts(id) ON DELETE CASCADE,
    created    INTEGER NOT NULL
);

-- kind: apns, gcm, fcm, webpush, relay. `registration_id` is the push token
-- (APNs, FCM), the endpoint URL (Web Push) or the upstream messages URL (relay).
CREATE TABLE relay_devices (
    id              TEXT PRIMARY KEY,
    account_id      INTEGER NOT NULL REFERENCES relay_accounts(id) ON DELETE CASCADE,
    kind            TEXT NOT NULL,
    name            TEXT,
    active          INTEGER NOT NULL DEFAULT 1,
    registration_id TEXT NOT NULL,
    device_id       TEXT,
    p256dh          TEXT,
    auth            TEXT,
    upstream_token  TEXT,
    created         INTEGER NOT NULL
);
CREATE INDEX relay_devices_account ON relay_devices(account_id);

CREATE TABLE relay_tokens (
    hash       BLOB PRIMARY KEY,
    prefix     TEXT NOT NULL,
    account_id INTEGER NOT NULL REFERENCES relay_accounts(id) ON DELETE CASCADE,
    device_id  TEXT NOT NULL REFERENCES relay_devices(id) ON DELETE CASCADE,
    name       TEXT,
    created    INTEGER NOT NULL,
    expires    INTEGER NOT NULL,
    rate       INTEGER
);
CREATE INDEX relay_tokens_account ON relay_tokens(account_id);

-- One row per accepted push; deleted once every delivery has finished.
CREATE TABLE relay_outbox (
    id         INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES relay_accounts(id) ON DELETE CASCADE,
    token      TEXT NOT NULL,
    collapse   TEXT NOT NULL,
    data       TEXT,
    priority   TEXT NOT NULL,
    created    INTEGER NOT NULL,
    expires    INTEGER NOT NULL
);

-- One row per (push, device): the unit of delivery, so a device never gets
-- one push twice. state: pending, sending (claimed by the dispatcher), done,
-- failed. next_at in milliseconds.
CREATE TABLE relay_deliveries (
    push_id   INTEGER NOT NULL REFERENCES relay_outbox(id) ON DELETE CASCADE,
    device_id TEXT NOT NULL REFERENCES relay_devices(id) ON DELETE CASCADE,
    state     TEXT NOT NULL DEFAULT 'pending',
    attempts  INTEGER NOT NULL DEFAULT 0,
    next_at   INTEGER NOT NULL,
    PRIMARY KEY (push_id, device_id)
);
CREATE INDEX relay_deliveries_due ON relay_deliveries(state, next_at);
