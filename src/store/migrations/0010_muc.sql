-- XEP-0045 rooms: what survives a restart. Occupants are in memory only.
CREATE TABLE muc_rooms (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,          -- the room JID's local part
    config      TEXT NOT NULL,                 -- JSON: the room configuration
    subject     TEXT NOT NULL DEFAULT '',
    subject_by  TEXT NOT NULL DEFAULT '',      -- nick of whoever set it
    vcard       TEXT,                          -- vcard-temp of the room (its avatar)
    secret      BLOB NOT NULL,                 -- keys occupant-ids (XEP-0421)
    created_at  INTEGER NOT NULL
);

-- Affiliations by bare JID: owner, admin, member, outcast.
CREATE TABLE muc_affiliations (
    room_id     INTEGER NOT NULL REFERENCES muc_rooms(id) ON DELETE CASCADE,
    jid         TEXT NOT NULL,
    affiliation TEXT NOT NULL CHECK (affiliation IN ('owner','admin','member','outcast')),
    reason      TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (room_id, jid)
);
CREATE INDEX muc_affiliations_jid ON muc_affiliations(jid, affiliation);

-- The room archive (XEP-0313 on the room JID), one row per groupchat message.
CREATE TABLE muc_archive (
    id          INTEGER PRIMARY KEY,
    room_id     INTEGER NOT NULL REFERENCES muc_rooms(id) ON DELETE CASCADE,
    stanza_id   TEXT NOT NULL,
    ts          INTEGER NOT NULL,              -- microseconds since the epoch
    with_jid    TEXT NOT NULL,                 -- room/nick of the sender
    stanza      TEXT NOT NULL
);
CREATE UNIQUE INDEX muc_archive_stanza_id ON muc_archive(room_id, stanza_id);
CREATE INDEX muc_archive_room ON muc_archive(room_id, id);
CREATE INDEX muc_archive_ts ON muc_archive(ts);
