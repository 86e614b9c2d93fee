-- Invitations made by users (XEP-0401 ad-hoc commands) and what they promise.
-- creator: bare JID of the account that made it; NULL: the command line.
-- contact: username whose contact the invitee becomes (a contact invitation,
--   `xmpp:user@domain?roster;preauth=…`); NULL for an account invitation.
-- allow_registration: whether the token can create an account (a contact
--   invitation without it only makes an existing account a contact, XEP-0379).
ALTER TABLE invites ADD COLUMN creator TEXT;
ALTER TABLE invites ADD COLUMN contact TEXT;
ALTER TABLE invites ADD COLUMN allow_registration INTEGER NOT NULL DEFAULT 1;
CREATE INDEX invites_creator ON invites(creator);

-- The mutual subscription an invitation made, until the inviter's clients
-- have been told (a roster push on registration or on the new account's
-- first login). The roster rows themselves are written with the account.
CREATE TABLE invite_links (
    account_id  INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    inviter     TEXT NOT NULL,
    PRIMARY KEY (account_id, inviter)
);
