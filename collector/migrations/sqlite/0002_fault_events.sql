-- Fault events as agents reported them: each check's raise and clear, with
-- the measured value and evidence. (endpoint, sequence) identifies the
-- message; the ticket engine reads by (endpoint, check, subject).

CREATE TABLE fault_events (
    id          INTEGER PRIMARY KEY,
    endpoint_id TEXT NOT NULL REFERENCES endpoints (id),
    seq         INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    at_ms       INTEGER NOT NULL,
    check_id    TEXT NOT NULL,
    subject     TEXT NOT NULL,
    state       TEXT NOT NULL,
    severity    TEXT NOT NULL,
    value       REAL NOT NULL,
    evidence    TEXT NOT NULL
);

CREATE UNIQUE INDEX fault_events_endpoint_seq ON fault_events (endpoint_id, seq);
CREATE INDEX fault_events_check ON fault_events (endpoint_id, check_id, subject);
