-- The collector's schema on PostgreSQL: the same tables as on SQLite, with
-- native types (BOOLEAN flags, BIGINT times in ms since the Unix epoch,
-- BYTEA snapshots in their protobuf encoding), and the snapshot history
-- partitioned by receive time so that its retention drops whole partitions.

CREATE TABLE endpoints (
    id                   TEXT PRIMARY KEY,
    hostname             TEXT NOT NULL DEFAULT '',
    platform             TEXT NOT NULL DEFAULT '',
    os                   TEXT NOT NULL DEFAULT '',
    agent_version        TEXT NOT NULL DEFAULT '',
    online               BOOLEAN NOT NULL DEFAULT FALSE,
    first_seen_ms        BIGINT NOT NULL,
    last_seen_ms         BIGINT NOT NULL,
    state_since_ms       BIGINT NOT NULL,
    -- Highest sequence committed for this endpoint: what the agent may drop.
    committed_seq        BIGINT NOT NULL DEFAULT 0,
    cpu_usage_percent    DOUBLE PRECISION NOT NULL DEFAULT 0,
    memory_used_percent  DOUBLE PRECISION NOT NULL DEFAULT 0,
    fullest_disk_percent DOUBLE PRECISION NOT NULL DEFAULT 0,
    latest_snapshot_ms   BIGINT NOT NULL DEFAULT 0,
    latest_snapshot      BYTEA,
    -- When the newest history entry was taken (downsampling).
    last_history_ms      BIGINT NOT NULL DEFAULT 0,
    -- The latest snapshot's IP addresses, a JSON list.
    addresses            TEXT NOT NULL DEFAULT '[]',
    enrolled_site        TEXT NOT NULL DEFAULT '',
    enrolled_tags        TEXT NOT NULL DEFAULT '[]',
    machine_id           TEXT NOT NULL DEFAULT '',
    clone_machine_id     TEXT NOT NULL DEFAULT '',
    revoked_ms           BIGINT NOT NULL DEFAULT 0,
    revoke_reason        TEXT NOT NULL DEFAULT '',
    -- The replica holding the endpoint's live session: only it closes the
    -- session, and a replica starting after a crash marks offline only
    -- the sessions it held.
    session_replica      TEXT NOT NULL DEFAULT ''
);

CREATE INDEX endpoints_last_seen ON endpoints (last_seen_ms DESC, id);

-- Snapshot history, one partition per span of receive time (the store
-- creates them ahead and drops those past retention). Replays are refused
-- before this by the endpoint's committed sequence, under its row lock.
CREATE TABLE snapshots (
    endpoint_id TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    received_ms BIGINT NOT NULL,
    taken_ms    BIGINT NOT NULL,
    body        BYTEA NOT NULL
) PARTITION BY RANGE (received_ms);

CREATE INDEX snapshots_endpoint_seq ON snapshots (endpoint_id, seq);

-- Fault events as agents reported them. Their ids are handed out in commit
-- order (the ingest commit takes a transaction lock before inserting
-- them), so the ticket engine reading past its cursor never misses one
-- committed late by another replica.
CREATE TABLE fault_events (
    id          BIGSERIAL PRIMARY KEY,
    endpoint_id TEXT NOT NULL REFERENCES endpoints (id),
    seq         BIGINT NOT NULL,
    received_ms BIGINT NOT NULL,
    at_ms       BIGINT NOT NULL,
    check_id    TEXT NOT NULL,
    subject     TEXT NOT NULL,
    state       TEXT NOT NULL,
    severity    TEXT NOT NULL,
    value       DOUBLE PRECISION NOT NULL,
    evidence    TEXT NOT NULL,
    via         TEXT NOT NULL DEFAULT ''
);

CREATE UNIQUE INDEX fault_events_endpoint_seq ON fault_events (endpoint_id, seq);

-- Tickets, incidents and timelines: written only by the leading replica's
-- ticket engine. `body` is the domain type as JSON.
CREATE TABLE tickets (
    id          BIGINT PRIMARY KEY,
    endpoint_id TEXT NOT NULL,
    check_id    TEXT NOT NULL,
    subject     TEXT NOT NULL,
    status      TEXT NOT NULL,
    priority    TEXT NOT NULL,
    assignee    TEXT,
    incident    BIGINT,
    opened_ms   BIGINT NOT NULL,
    updated_ms  BIGINT NOT NULL,
    body        TEXT NOT NULL
);

CREATE INDEX tickets_status ON tickets (status, priority);
CREATE INDEX tickets_key ON tickets (endpoint_id, check_id, subject);

CREATE TABLE incidents (
    id          BIGINT PRIMARY KEY,
    check_id    TEXT NOT NULL,
    opened_ms   BIGINT NOT NULL,
    resolved_ms BIGINT,
    body        TEXT NOT NULL
);

CREATE TABLE ticket_timeline (
    id       BIGSERIAL PRIMARY KEY,
    ticket   BIGINT,
    incident BIGINT,
    at_ms    BIGINT NOT NULL,
    who      TEXT NOT NULL,
    kind     TEXT NOT NULL,
    text     TEXT NOT NULL
);

CREATE INDEX ticket_timeline_ticket ON ticket_timeline (ticket, id);

-- How far the engine has read fault_events, moved in the same transaction
-- as the tickets it produced; and the leader's term, raised by each replica
-- that takes the lead. A ticket step or delivery record checks the term
-- under this row's lock, so a replica that lost the lead cannot write
-- after its successor has read the state.
CREATE TABLE ticket_cursor (
    one            INTEGER PRIMARY KEY CHECK (one = 1),
    fault_event_id BIGINT NOT NULL,
    leader_term    BIGINT NOT NULL DEFAULT 0
);

INSERT INTO ticket_cursor (one, fault_event_id) VALUES (1, 0);

CREATE TABLE ticket_snapshots (
    ticket BIGINT NOT NULL,
    at_ms  BIGINT NOT NULL,
    body   BYTEA NOT NULL
);

CREATE INDEX ticket_snapshots_ticket ON ticket_snapshots (ticket, at_ms);

CREATE TABLE ticket_awaiting (
    ticket      BIGINT PRIMARY KEY,
    endpoint_id TEXT NOT NULL,
    fault_at_ms BIGINT NOT NULL,
    since_ms    BIGINT NOT NULL
);

-- Notifications (webhook posts and mails) waiting to be sent, written with
-- the timeline entries they announce.
CREATE TABLE webhook_outbox (
    id              BIGSERIAL PRIMARY KEY,
    webhook         TEXT NOT NULL,
    event           TEXT NOT NULL,
    body            TEXT NOT NULL,
    created_ms      BIGINT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms BIGINT NOT NULL,
    delivered_ms    BIGINT,
    dead_ms         BIGINT,
    last_error      TEXT
);

CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_ms)
    WHERE delivered_ms IS NULL AND dead_ms IS NULL;

-- The audit log of diagnostics. Append-only: the triggers refuse any
-- change, removal or truncation, whoever asks.
CREATE TABLE audit_log (
    id          BIGSERIAL PRIMARY KEY,
    at_ms       BIGINT NOT NULL,
    who         TEXT NOT NULL,
    role        TEXT NOT NULL,
    endpoint_id TEXT NOT NULL,
    kind        TEXT NOT NULL,
    params      TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    detail      TEXT NOT NULL,
    duration_ms BIGINT NOT NULL,
    ticket      BIGINT
);

CREATE INDEX audit_log_endpoint ON audit_log (endpoint_id, id);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END;
$$;

CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

CREATE TABLE console_accounts (
    name            TEXT PRIMARY KEY,
    role            TEXT NOT NULL,
    sites           TEXT NOT NULL DEFAULT '[]',
    password_hash   TEXT NOT NULL,
    must_change     BOOLEAN NOT NULL DEFAULT TRUE,
    disabled        BOOLEAN NOT NULL DEFAULT FALSE,
    created_ms      BIGINT NOT NULL,
    updated_ms      BIGINT NOT NULL,
    totp_secret     TEXT,
    recovery_codes  TEXT NOT NULL DEFAULT '[]'
);

CREATE TABLE enroll_tokens (
    id           TEXT PRIMARY KEY,
    secret_hash  TEXT NOT NULL,
    max_uses     BIGINT NOT NULL,
    used         BIGINT NOT NULL DEFAULT 0,
    expires_ms   BIGINT NOT NULL,
    site         TEXT NOT NULL DEFAULT '',
    tags         TEXT NOT NULL DEFAULT '[]',
    id_pattern   TEXT NOT NULL DEFAULT '',
    reenroll     BOOLEAN NOT NULL DEFAULT FALSE,
    created_ms   BIGINT NOT NULL,
    created_by   TEXT NOT NULL,
    last_used_ms BIGINT NOT NULL DEFAULT 0,
    last_used_by TEXT NOT NULL DEFAULT '',
    revoked_ms   BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE certificates (
    serial        TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    subject       TEXT NOT NULL,
    issued_ms     BIGINT NOT NULL,
    not_after_ms  BIGINT NOT NULL,
    via           TEXT NOT NULL,
    revoked_ms    BIGINT NOT NULL DEFAULT 0,
    revoke_reason TEXT NOT NULL DEFAULT ''
);

CREATE INDEX certificates_subject ON certificates (kind, subject);

CREATE TABLE revoked_specialists (
    name       TEXT PRIMARY KEY,
    revoked_ms BIGINT NOT NULL,
    reason     TEXT NOT NULL
);
