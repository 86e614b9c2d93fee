-- XEP-0363 HTTP upload slots and files (stored under data_dir/upload/<id>).
CREATE TABLE uploads (
    id            TEXT PRIMARY KEY,      -- 128-bit random, hex; the URL's secret
    owner         TEXT NOT NULL,         -- bare JID
    filename      TEXT NOT NULL,
    size          INTEGER NOT NULL,
    content_type  TEXT,
    created_at    INTEGER NOT NULL,
    uploaded      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX uploads_owner ON uploads(owner);
CREATE INDEX uploads_created ON uploads(created_at);
