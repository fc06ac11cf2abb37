-- The console's second factor: an account's TOTP secret (base32; none
-- until enrolled) and the SHA-256 hashes of its unused recovery codes (a
-- JSON list).

ALTER TABLE console_accounts ADD COLUMN totp_secret TEXT;
ALTER TABLE console_accounts ADD COLUMN recovery_codes TEXT NOT NULL DEFAULT '[]';
