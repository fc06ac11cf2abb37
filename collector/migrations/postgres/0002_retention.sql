-- Retention. Audit entries leave the database only once they are in an
-- archive file: each archive records the range of ids it holds and the
-- SHA-256 of its file, and the audit log refuses to lose any entry not
-- covered by one (changes and truncation stay refused).

CREATE TABLE audit_archives (
    id       BIGSERIAL PRIMARY KEY,
    first_id BIGINT NOT NULL,
    last_id  BIGINT NOT NULL,
    entries  BIGINT NOT NULL,
    file     TEXT NOT NULL,
    sha256   TEXT NOT NULL,
    at_ms    BIGINT NOT NULL
);

CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE'
       AND OLD.id <= (SELECT COALESCE(MAX(last_id), 0) FROM audit_archives) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'the audit log is append-only: only archived entries leave it';
END;
$$;

-- Retention finds old rows by time without reading whole tables.
CREATE INDEX tickets_closed ON tickets (updated_ms) WHERE status IN ('resolved', 'closed');
CREATE INDEX webhook_outbox_done ON webhook_outbox (created_ms)
    WHERE delivered_ms IS NOT NULL OR dead_ms IS NOT NULL;
CREATE INDEX certificates_expiry ON certificates (not_after_ms);
CREATE INDEX incidents_resolved ON incidents (resolved_ms) WHERE resolved_ms IS NOT NULL;
CREATE INDEX tickets_incident ON tickets (incident) WHERE incident IS NOT NULL;
CREATE INDEX ticket_timeline_incident ON ticket_timeline (incident) WHERE incident IS NOT NULL;

-- Set on new endpoints (and by hand after restoring a dump): at its next
-- welcome the agent is asked to tell again what it holds raised.
ALTER TABLE endpoints ADD COLUMN resync BOOLEAN NOT NULL DEFAULT true;
