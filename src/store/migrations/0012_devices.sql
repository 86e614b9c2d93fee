-- The clients an account logs in from, as SASL2 names them (XEP-0388
-- <user-agent id='UUID'>), and the FAST tokens (XEP-0484) issued to them.
CREATE TABLE user_agents (
    account_id  INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    agent_id    TEXT NOT NULL,      -- the client installation's UUID
    software    TEXT,
    device      TEXT,
    first_seen  INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL,
    PRIMARY KEY (account_id, agent_id)
) WITHOUT ROWID;

-- At most two tokens per client (XEP-0484 §6.1): 'current', the one last
-- used, and 'new', issued and not used yet. Never the token itself: for
-- HT-SHA-256-NONE, SHA-256 of the initiator's proof and the responder's
-- answer (see xmpp::sasl::TokenVerifier).
CREATE TABLE fast_tokens (
    account_id  INTEGER NOT NULL,
    agent_id    TEXT NOT NULL,
    slot        TEXT NOT NULL CHECK (slot IN ('current', 'new')),
    mechanism   TEXT NOT NULL,
    verifier    BLOB NOT NULL,
    responder   BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (account_id, agent_id, slot),
    FOREIGN KEY (account_id, agent_id) REFERENCES user_agents(account_id, agent_id) ON DELETE CASCADE
) WITHOUT ROWID;
