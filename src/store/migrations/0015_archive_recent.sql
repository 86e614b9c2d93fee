-- The archive writer's landing table (issue 14): each batch of account
-- archive rows (committed every 10 ms, as before) is written here, where
-- appending touches only the table's last pages, and the writer moves the
-- rows into `archive` every quarter second or so, before a MAM query reads
-- (queries drain the writer first), at shutdown and at start-up after a
-- crash. Each move dirties the `archive_with` index's leaves once for
-- many batches instead of once per batch. Ids are the reserved row ids.
CREATE TABLE archive_recent (
    id          INTEGER PRIMARY KEY,
    account_id  INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    ts          INTEGER NOT NULL,          -- microseconds since the epoch
    with_jid    TEXT NOT NULL,             -- bare JID of the other party
    stanza      TEXT NOT NULL
);
