-- Ticket events waiting to be posted to webhooks. Rows are written in the
-- same transaction as the timeline entries they announce, so none is lost
-- or doubled across restarts; a row stays until the receiver answers 2xx
-- (delivered_ms) or the attempts run out (dead_ms, with the last error).

CREATE TABLE webhook_outbox (
    id              INTEGER PRIMARY KEY,
    webhook         TEXT NOT NULL,
    event           TEXT NOT NULL,
    body            TEXT NOT NULL,
    created_ms      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL,
    delivered_ms    INTEGER,
    dead_ms         INTEGER,
    last_error      TEXT
);

CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_ms)
    WHERE delivered_ms IS NULL AND dead_ms IS NULL;
