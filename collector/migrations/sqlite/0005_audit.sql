-- The audit log of diagnostics: who (certificate identity) asked which
-- endpoint for what, when, and how it went. Append-only: the triggers
-- refuse any change or removal, whoever asks.

CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY,
    at_ms       INTEGER NOT NULL,
    who         TEXT NOT NULL,
    role        TEXT NOT NULL,
    endpoint_id TEXT NOT NULL,
    kind        TEXT NOT NULL,
    params      TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    detail      TEXT NOT NULL,
    duration_ms INTEGER NOT NULL,
    ticket      INTEGER
);

CREATE INDEX audit_log_endpoint ON audit_log (endpoint_id, id);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
