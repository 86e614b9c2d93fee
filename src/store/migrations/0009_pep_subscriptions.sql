-- XEP-0060 §6.1 explicit subscriptions to PEP nodes, beside the implicit
-- ones that a contact's caps `+notify` features make. Deleting a node
-- deletes its subscriptions.
CREATE TABLE pep_subscriptions (
    account_id  INTEGER NOT NULL,
    node        TEXT NOT NULL,
    jid         TEXT NOT NULL,       -- the subscribed JID, bare or full
    subid       TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (account_id, node, jid),
    FOREIGN KEY (account_id, node) REFERENCES pep_nodes(account_id, node) ON DELETE CASCADE
) WITHOUT ROWID;
