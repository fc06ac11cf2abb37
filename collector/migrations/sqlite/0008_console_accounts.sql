-- Local accounts of the specialists' web console: a name, a role (the
-- same roles as specialist certificates), the sites it is scoped to (a
-- JSON list; empty means all), an argon2id password hash (PHC string),
-- whether the password must be changed at the next login (a one-time
-- password), and whether the account is disabled.

CREATE TABLE console_accounts (
    name            TEXT PRIMARY KEY,
    role            TEXT NOT NULL,
    sites           TEXT NOT NULL DEFAULT '[]',
    password_hash   TEXT NOT NULL,
    must_change     INTEGER NOT NULL DEFAULT 1,
    disabled        INTEGER NOT NULL DEFAULT 0,
    created_ms      INTEGER NOT NULL,
    updated_ms      INTEGER NOT NULL
);
