-- How many snapshots each endpoint holds in `snapshots`, kept by the ingest
-- transaction that adds and prunes them, so pruning to the history bound
-- deletes the oldest few rows instead of counting the whole range first.

ALTER TABLE endpoints ADD COLUMN history_len INTEGER NOT NULL DEFAULT 0;

UPDATE endpoints SET history_len =
    (SELECT COUNT(*) FROM snapshots WHERE endpoint_id = endpoints.id);
