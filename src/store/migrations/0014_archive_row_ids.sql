-- Account archive ids are row ids (issue 14): the daemon reserves each
-- message's row id (a microsecond timestamp, see the mam module) and hands
-- it to clients in decimal as the stanza-id, so new rows need neither a
-- stanza_id of their own (NULL) nor the unique index over it; rows from
-- before keep their UUIDs there, which clients may still page by. Expiry
-- walks ids (they increase with time) instead of an index on ts. Each
-- archived row is written to two B-trees (table, archive_with) instead of
-- four. The column's NOT NULL goes, so the table is copied once.
CREATE TABLE archive_new (
    id          INTEGER PRIMARY KEY,
    account_id  INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    stanza_id   TEXT,                      -- NULL: the stanza-id is `id` in decimal
    ts          INTEGER NOT NULL,          -- microseconds since the epoch
    with_jid    TEXT NOT NULL,             -- bare JID of the other party
    stanza      TEXT NOT NULL
);
INSERT INTO archive_new (id, account_id, stanza_id, ts, with_jid, stanza)
    SELECT id, account_id, stanza_id, ts, with_jid, stanza FROM archive;
DROP TABLE archive;
ALTER TABLE archive_new RENAME TO archive;
CREATE UNIQUE INDEX archive_stanza_id ON archive(account_id, stanza_id) WHERE stanza_id IS NOT NULL;
CREATE INDEX archive_with ON archive(account_id, with_jid, id);
