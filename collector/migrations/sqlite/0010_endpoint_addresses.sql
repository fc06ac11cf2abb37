-- Each endpoint's IP addresses from its latest snapshot (a JSON list,
-- loopback left out), so that the sites and tags of the running policy
-- can place every endpoint without reading its snapshot.

ALTER TABLE endpoints ADD COLUMN addresses TEXT NOT NULL DEFAULT '[]';
