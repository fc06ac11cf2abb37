-- Retention. Audit entries leave the database only once they are in an
-- archive file: each archive records the range of ids it holds and the
-- SHA-256 of its file, and the audit log refuses to lose any entry not
-- covered by one.

CREATE TABLE IF NOT EXISTS audit_archives (
    id       INTEGER PRIMARY KEY,
    first_id INTEGER NOT NULL,
    last_id  INTEGER NOT NULL,
    entries  INTEGER NOT NULL,
    file     TEXT NOT NULL,
    sha256   TEXT NOT NULL,
    at_ms    INTEGER NOT NULL
);

DROP TRIGGER IF EXISTS audit_log_no_delete;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
WHEN OLD.id > (SELECT COALESCE(MAX(last_id), 0) FROM audit_archives)
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only: only archived entries leave it');
END;

-- Retention finds old rows by time without reading whole tables.
CREATE INDEX IF NOT EXISTS tickets_closed ON tickets (updated_ms) WHERE status IN ('resolved', 'closed');
CREATE INDEX IF NOT EXISTS webhook_outbox_done ON webhook_outbox (created_ms)
    WHERE delivered_ms IS NOT NULL OR dead_ms IS NOT NULL;
CREATE INDEX IF NOT EXISTS certificates_expiry ON certificates (not_after_ms);
CREATE INDEX IF NOT EXISTS incidents_resolved ON incidents (resolved_ms) WHERE resolved_ms IS NOT NULL;
CREATE INDEX IF NOT EXISTS tickets_incident ON tickets (incident) WHERE incident IS NOT NULL;
CREATE INDEX IF NOT EXISTS ticket_timeline_incident ON ticket_timeline (incident) WHERE incident IS NOT NULL;

-- Set on every endpoint by a restore (and on new ones): at its next
-- welcome the agent is asked to tell again what it holds raised.
ALTER TABLE endpoints ADD COLUMN resync INTEGER NOT NULL DEFAULT 1;
