-- XEP-0357 registrations made with pushbox's app server (push.<domain>).
-- The node is the relay whitelist token; only hashes are kept.
CREATE TABLE app_registrations (
    token_hash  BLOB PRIMARY KEY,
    secret_hash BLOB NOT NULL,
    owner       TEXT NOT NULL,       -- bare JID that registered
    device_id   TEXT NOT NULL,       -- the relay device it pushes to
    created_at  INTEGER NOT NULL
);
CREATE INDEX app_registrations_owner ON app_registrations(owner);
