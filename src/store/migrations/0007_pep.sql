-- Account data (issue 4): PEP nodes and items (XEP-0163 / XEP-0060),
-- vCards (XEP-0054), private XML storage (XEP-0049), blocklists (XEP-0191).

-- One PEP node per (account, node name); `config` is the node
-- configuration as JSON (see src/store/pep.rs `NodeConfig`).
CREATE TABLE pep_nodes (
    account_id  INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    node        TEXT NOT NULL,
    config      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (account_id, node)
) WITHOUT ROWID;

-- Published items, in publication order (`seq`); a republished id moves to the end.
CREATE TABLE pep_items (
    seq          INTEGER PRIMARY KEY,
    account_id   INTEGER NOT NULL,
    node         TEXT NOT NULL,
    item_id      TEXT NOT NULL,
    payload      TEXT NOT NULL,          -- the <item/>'s children, serialised
    publisher    TEXT NOT NULL,
    published_at INTEGER NOT NULL,
    FOREIGN KEY (account_id, node) REFERENCES pep_nodes(account_id, node) ON DELETE CASCADE,
    UNIQUE (account_id, node, item_id)
);
CREATE INDEX pep_items_node ON pep_items(account_id, node, seq);

-- XEP-0054 vcard-temp, one per account.
CREATE TABLE vcards (
    account_id  INTEGER PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
    vcard       TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
);

-- XEP-0049 private XML storage, one element per (account, namespace).
CREATE TABLE private_xml (
    account_id  INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    ns          TEXT NOT NULL,
    xml         TEXT NOT NULL,
    PRIMARY KEY (account_id, ns)
) WITHOUT ROWID;

-- XEP-0191 blocklists: JIDs (domain, bare, full or domain/resource).
CREATE TABLE blocklist (
    account_id  INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    jid         TEXT NOT NULL,
    PRIMARY KEY (account_id, jid)
) WITHOUT ROWID;
