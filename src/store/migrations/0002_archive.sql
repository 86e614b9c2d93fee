-- XEP-0313 message archive, one row per message per account.
CREATE TABLE archive (
    id          INTEGER PRIMARY KEY,
    account_id  INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    stanza_id   TEXT NOT NULL,
    ts          INTEGER NOT NULL,          -- microseconds since the epoch
    with_jid    TEXT NOT NULL,             -- bare JID of the other party
    stanza      TEXT NOT NULL
);
CREATE UNIQUE INDEX archive_stanza_id ON archive(account_id, stanza_id);
CREATE INDEX archive_with ON archive(account_id, with_jid, id);
CREATE INDEX archive_ts ON archive(ts);

-- XEP-0313 preferences.
CREATE TABLE archive_prefs (
    account_id   INTEGER PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
    default_mode TEXT NOT NULL DEFAULT 'always' CHECK (default_mode IN ('always','never','roster')),
    always       TEXT NOT NULL DEFAULT '[]',
    never        TEXT NOT NULL DEFAULT '[]'
);
