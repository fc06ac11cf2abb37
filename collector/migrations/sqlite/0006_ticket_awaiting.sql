-- Tickets waiting for the snapshot that shows their fault (at most a couple
-- of minutes each). Written in the same transaction as the ticket that
-- starts waiting, removed in the one that stores its snapshot, so a
-- restart goes on waiting instead of leaving the ticket without evidence.
CREATE TABLE ticket_awaiting (
    ticket      INTEGER PRIMARY KEY,
    endpoint_id TEXT NOT NULL,
    fault_at_ms INTEGER NOT NULL,
    since_ms    INTEGER NOT NULL
);
