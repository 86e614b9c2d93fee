-- tigase:push:encrypt:0: the AES-128-GCM key a client gave in <enable/>.
-- The server must seal each notification with it, so it cannot be hashed.
ALTER TABLE push_registrations ADD COLUMN encrypt_key BLOB;
