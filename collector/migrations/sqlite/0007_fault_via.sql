-- What a fault's subject is reached through (a DNS name's resolver, the
-- gateway in front of a key service), as the agent reported it: subjects
-- failing through the same way in are one ticket where the policy says so.

ALTER TABLE fault_events ADD COLUMN via TEXT NOT NULL DEFAULT '';
