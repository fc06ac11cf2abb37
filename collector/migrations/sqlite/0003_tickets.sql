-- Tickets kept by the ticket engine, their parent incidents, and their
-- timelines. The engine is the single writer. `body` holds the ticket or
-- incident as JSON (the domain type); the columns beside it are what
-- specialists filter on.

CREATE TABLE tickets (
    id          INTEGER PRIMARY KEY,
    endpoint_id TEXT NOT NULL,
    check_id    TEXT NOT NULL,
    subject     TEXT NOT NULL,
    status      TEXT NOT NULL,
    priority    TEXT NOT NULL,
    assignee    TEXT,
    incident    INTEGER,
    opened_ms   INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL,
    body        TEXT NOT NULL
);

CREATE INDEX tickets_status ON tickets (status, priority);
CREATE INDEX tickets_key ON tickets (endpoint_id, check_id, subject);

CREATE TABLE incidents (
    id          INTEGER PRIMARY KEY,
    check_id    TEXT NOT NULL,
    opened_ms   INTEGER NOT NULL,
    resolved_ms INTEGER,
    body        TEXT NOT NULL
);

CREATE TABLE ticket_timeline (
    id       INTEGER PRIMARY KEY,
    ticket   INTEGER,
    incident INTEGER,
    at_ms    INTEGER NOT NULL,
    who      TEXT NOT NULL,
    kind     TEXT NOT NULL,
    text     TEXT NOT NULL
);

CREATE INDEX ticket_timeline_ticket ON ticket_timeline (ticket, id);

-- How far the engine has read fault_events (by id). It moves in the same
-- transaction as the tickets it produced, so each fault event takes effect
-- exactly once, across restarts and crashes.
CREATE TABLE ticket_cursor (
    one            INTEGER PRIMARY KEY CHECK (one = 1),
    fault_event_id INTEGER NOT NULL
);

INSERT INTO ticket_cursor (one, fault_event_id) VALUES (1, 0);

-- The endpoint's snapshot when its ticket opened (or reopened): the
-- evidence a specialist reads, even after newer snapshots replaced it.
CREATE TABLE ticket_snapshots (
    ticket INTEGER NOT NULL,
    at_ms  INTEGER NOT NULL,
    body   TEXT NOT NULL
);

CREATE INDEX ticket_snapshots_ticket ON ticket_snapshots (ticket, at_ms);
