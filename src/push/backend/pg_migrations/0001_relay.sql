-- The push relay's state in PostgreSQL, shared by every pushbox node that
-- names this database: the same tables as SQLite's 0004_relay.sql, plus the
-- per-token rate state (GCRA), claim leases and values all nodes share.
-- Times are Unix seconds unless named otherwise; secrets are SHA-256.

CREATE TABLE relay_accounts (
    id            BIGSERIAL PRIMARY KEY,
    username      TEXT NOT NULL CONSTRAINT relay_accounts_username UNIQUE,
    email         TEXT NOT NULL DEFAULT '',
    password_hash TEXT NOT NULL,
    created       BIGINT NOT NULL
);
CREATE UNIQUE INDEX relay_accounts_email ON relay_accounts (email) WHERE email <> '';

CREATE TABLE relay_api_keys (
    hash       BYTEA PRIMARY KEY,
    account_id BIGINT NOT NULL REFERENCES relay_accounts (id) ON DELETE CASCADE,
    created    BIGINT NOT NULL
);
CREATE INDEX relay_api_keys_account ON relay_api_keys (account_id);

-- `seq` keeps creation order within one second.
CREATE TABLE relay_devices (
    id              TEXT PRIMARY KEY,
    account_id      BIGINT NOT NULL REFERENCES relay_accounts (id) ON DELETE CASCADE,
    kind            TEXT NOT NULL,
    name            TEXT,
    active          BOOLEAN NOT NULL DEFAULT TRUE,
    registration_id TEXT NOT NULL,
    device_id       TEXT,
    p256dh          TEXT,
    auth            TEXT,
    upstream_token  TEXT,
    created         BIGINT NOT NULL,
    seq             BIGSERIAL
);
CREATE INDEX relay_devices_account ON relay_devices (account_id, kind);

-- `tat`: the GCRA theoretical arrival time in microseconds, moved forward
-- by the statement that accepts a push, so the limit holds across nodes.
CREATE TABLE relay_tokens (
    hash       BYTEA PRIMARY KEY,
    prefix     TEXT NOT NULL,
    account_id BIGINT NOT NULL REFERENCES relay_accounts (id) ON DELETE CASCADE,
    device_id  TEXT NOT NULL REFERENCES relay_devices (id) ON DELETE CASCADE,
    name       TEXT,
    created    BIGINT NOT NULL,
    expires    BIGINT NOT NULL,
    rate       INTEGER,
    tat        BIGINT NOT NULL DEFAULT 0,
    seq        BIGSERIAL
);
CREATE INDEX relay_tokens_account ON relay_tokens (account_id);
CREATE INDEX relay_tokens_device ON relay_tokens (device_id);

CREATE TABLE relay_outbox (
    id         BIGSERIAL PRIMARY KEY,
    account_id BIGINT NOT NULL REFERENCES relay_accounts (id) ON DELETE CASCADE,
    token      TEXT NOT NULL,
    collapse   TEXT NOT NULL,
    data       TEXT,
    priority   TEXT NOT NULL,
    created    BIGINT NOT NULL,
    expires    BIGINT NOT NULL
);
CREATE INDEX relay_outbox_account ON relay_outbox (account_id);

-- state: pending, sending (claimed by `claimed_by` until `next_at`, the end
-- of its lease, after which any node may claim it again), done, failed.
-- next_at in milliseconds.
CREATE TABLE relay_deliveries (
    push_id    BIGINT NOT NULL REFERENCES relay_outbox (id) ON DELETE CASCADE,
    device_id  TEXT NOT NULL REFERENCES relay_devices (id) ON DELETE CASCADE,
    state      TEXT NOT NULL DEFAULT 'pending',
    attempts   INTEGER NOT NULL DEFAULT 0,
    next_at    BIGINT NOT NULL,
    claimed_by TEXT,
    PRIMARY KEY (push_id, device_id)
);
CREATE INDEX relay_deliveries_due ON relay_deliveries (next_at) WHERE state IN ('pending', 'sending');
CREATE INDEX relay_deliveries_device ON relay_deliveries (device_id);

-- Values every node uses alike: the VAPID key, the APNs provider token.
CREATE TABLE relay_shared (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    made  BIGINT NOT NULL
);
