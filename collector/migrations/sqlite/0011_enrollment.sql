-- Enrollment tokens, every certificate the collector signed, and what
-- enrollment, revocation and clone detection record on an endpoint.

CREATE TABLE enroll_tokens (
    -- The public half of a token, shown by `tokens list`.
    id           TEXT PRIMARY KEY,
    -- SHA-256 of the secret half, hex: the secret itself is never stored.
    secret_hash  TEXT NOT NULL,
    -- 0: any number of uses.
    max_uses     INTEGER NOT NULL,
    used         INTEGER NOT NULL DEFAULT 0,
    expires_ms   INTEGER NOT NULL,
    site         TEXT NOT NULL DEFAULT '',
    -- JSON list of strings.
    tags         TEXT NOT NULL DEFAULT '[]',
    -- Endpoint IDs it may enroll (`*` wildcards); empty: any.
    id_pattern   TEXT NOT NULL DEFAULT '',
    -- May take over the ID of an endpoint already enrolled.
    reenroll     INTEGER NOT NULL DEFAULT 0,
    created_ms   INTEGER NOT NULL,
    created_by   TEXT NOT NULL,
    last_used_ms INTEGER NOT NULL DEFAULT 0,
    last_used_by TEXT NOT NULL DEFAULT '',
    revoked_ms   INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE certificates (
    -- Hex, as in the certificate and the CRL.
    serial        TEXT PRIMARY KEY,
    -- endpoint or specialist
    kind          TEXT NOT NULL,
    -- The endpoint ID or the specialist's name.
    subject       TEXT NOT NULL,
    issued_ms     INTEGER NOT NULL,
    not_after_ms  INTEGER NOT NULL,
    -- How it came: enroll, renew, renew_expired, issue (by hand).
    via           TEXT NOT NULL,
    revoked_ms    INTEGER NOT NULL DEFAULT 0,
    revoke_reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX certificates_subject ON certificates (kind, subject);

-- Specialists revoked by name: every certificate of theirs issued before
-- is refused, recorded here or not (made by hand with `pki
-- issue-specialist`).
CREATE TABLE revoked_specialists (
    name       TEXT PRIMARY KEY,
    revoked_ms INTEGER NOT NULL,
    reason     TEXT NOT NULL
);

-- What the token placed the endpoint in (besides the policy's own sites
-- and tags), the machine it is bound to, a refused second machine, and
-- its revocation.
ALTER TABLE endpoints ADD COLUMN enrolled_site TEXT NOT NULL DEFAULT '';
ALTER TABLE endpoints ADD COLUMN enrolled_tags TEXT NOT NULL DEFAULT '[]';
ALTER TABLE endpoints ADD COLUMN machine_id TEXT NOT NULL DEFAULT '';
ALTER TABLE endpoints ADD COLUMN clone_machine_id TEXT NOT NULL DEFAULT '';
ALTER TABLE endpoints ADD COLUMN revoked_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE endpoints ADD COLUMN revoke_reason TEXT NOT NULL DEFAULT '';
