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
    -- The newest snapshot lives in `snapshots` under this sequence; history
    -- pruning never removes the newest, so the body is stored only once.
    latest_snapshot_seq  INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE snapshots (
    endpoint_id TEXT NOT NULL REFERENCES endpoints (id),
    seq         INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    taken_ms    INTEGER NOT NULL,
    body        TEXT NOT NULL,
    -- (endpoint, sequence) is the identity of an agent message: a replay
    -- after a reconnect hits this key and takes no effect.
    PRIMARY KEY (endpoint_id, seq)
) WITHOUT ROWID;
