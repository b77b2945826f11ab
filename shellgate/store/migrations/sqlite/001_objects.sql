-- The pre-CAS objects table, as the reference gateway had it (001 + labels from 004).
CREATE TABLE objects (
    id            TEXT PRIMARY KEY,
    object_type   TEXT NOT NULL,
    name          TEXT,
    scope         TEXT,
    version       INTEGER,
    status        TEXT,
    dedup_key     TEXT,
    hit_count     INTEGER NOT NULL DEFAULT 0,
    payload       BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    labels        TEXT NOT NULL DEFAULT '{}'
);
CREATE UNIQUE INDEX objects_name_uq ON objects (object_type, name) WHERE name IS NOT NULL;
CREATE UNIQUE INDEX objects_version_uq ON objects (object_type, scope, version)
    WHERE scope IS NOT NULL AND version IS NOT NULL;
CREATE INDEX objects_scope_status_idx ON objects (object_type, scope, status, version)
    WHERE scope IS NOT NULL;
CREATE UNIQUE INDEX objects_dedup_uq ON objects (object_type, scope, dedup_key)
    WHERE dedup_key IS NOT NULL;
