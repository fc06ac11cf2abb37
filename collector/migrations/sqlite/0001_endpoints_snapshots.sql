-- Endpoints and their snapshot history.
-- Times are milliseconds since the Unix epoch; snapshots are JSON text of the
-- domain type, so the PostgreSQL schema can mirror this one column for column.

CREATE TABLE endpoints (
    id                   TEXT PRIMARY KEY,
    hostname             TEXT NOT NULL DEFAULT '',
    platform             TEXT NOT NULL DEFAULT '',
    os                   TEXT NOT NULL DEFAULT '',
    agent_version        TEXT NOT NULL DEFAULT '',
    online               INTEGER NOT NULL DEFAULT 0,
    first_seen_ms        INTEGER NOT NULL,
    last_seen_ms         INTEGER NOT NULL,
    state_since_ms       INTEGER NOT NULL,
    -- Highest sequence committed for this endpoint: what the agent may drop.
    committed_seq        INTEGER NOT NULL DEFAULT 0,
    cpu_usage_percent    REAL NOT NULL DEFAULT 0,
    memory_used_percent  REAL NOT NULL DEFAULT 0,
    fullest_disk_percent REAL NOT NULL DEFAULT 0,
    latest_snapshot_ms   INTEGER NOT NULL DEFAULT 0,
    latest_snapshot      TEXT,
    -- When the newest snapshot in `snapshots` was taken: history is
    -- downsampled to one entry per `storage.history_interval`.
    last_history_ms      INTEGER NOT NULL DEFAULT 0
);

-- A rowid table: new snapshots append at the end of the B-tree instead of
-- landing in the middle of each endpoint's range, which keeps inserts cheap
-- at tens of thousands per second.
CREATE TABLE snapshots (
    id          INTEGER PRIMARY KEY,
    endpoint_id TEXT NOT NULL REFERENCES endpoints (id),
    seq         INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    taken_ms    INTEGER NOT NULL,
    body        TEXT NOT NULL
);

-- One history entry per (endpoint, sequence). Replays are recognised before
-- this, by the endpoint's committed sequence.
CREATE UNIQUE INDEX snapshots_endpoint_seq ON snapshots (endpoint_id, seq);
