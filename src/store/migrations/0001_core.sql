-- XMPP accounts. Passwords are kept only as SCRAM keys (RFC 5802):
-- StoredKey = H(HMAC(SaltedPassword, "Client Key")), ServerKey = HMAC(SaltedPassword, "Server Key").
CREATE TABLE accounts (
    id              INTEGER PRIMARY KEY,
    username        TEXT NOT NULL UNIQUE,
    created_at      INTEGER NOT NULL,
    is_admin        INTEGER NOT NULL DEFAULT 0,
    salt            BLOB NOT NULL,
    iterations      INTEGER NOT NULL,
    sha1_stored     BLOB NOT NULL,
    sha1_server     BLOB NOT NULL,
    sha256_stored   BLOB NOT NULL,
    sha256_server   BLOB NOT NULL,
    roster_version  INTEGER NOT NULL DEFAULT 0
);

-- RFC 6121 roster items, including subscription state that outlives sessions.
CREATE TABLE roster (
    account_id   INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    contact      TEXT NOT NULL,
    name         TEXT,
    groups       TEXT NOT NULL DEFAULT '[]',
    subscription TEXT NOT NULL DEFAULT 'none' CHECK (subscription IN ('none','to','from','both')),
    ask_out      INTEGER NOT NULL DEFAULT 0,   -- we asked the contact (Pending Out)
    pending_in   INTEGER NOT NULL DEFAULT 0,   -- the contact asked us (Pending In)
    pending_in_stanza TEXT,                    -- the subscribe request, redelivered at login
    preapproved  INTEGER NOT NULL DEFAULT 0,
    in_roster    INTEGER NOT NULL DEFAULT 1,   -- 0: state kept only for a pending request
    version      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, contact)
) WITHOUT ROWID;

-- XEP-0160 offline storage.
CREATE TABLE offline (
    id          INTEGER PRIMARY KEY,
    account_id  INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    created_at  INTEGER NOT NULL,
    stanza      TEXT NOT NULL
);
CREATE INDEX offline_account ON offline(account_id, id);

-- Invitations (XEP-0401 / XEP-0445). Only a hash of the token is kept.
CREATE TABLE invites (
    token_hash  BLOB PRIMARY KEY,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    uses_left   INTEGER NOT NULL,
    is_admin    INTEGER NOT NULL DEFAULT 0,
    note        TEXT
);
