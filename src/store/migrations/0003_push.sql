-- XEP-0357 registrations: where to publish when an account's clients sleep.
CREATE TABLE push_registrations (
    account_id  INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    service     TEXT NOT NULL,       -- the app server's JID
    node        TEXT NOT NULL,
    options     TEXT,                -- the publish-options form, as XML
    created_at  INTEGER NOT NULL,
    failures    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, service, node)
) WITHOUT ROWID;
