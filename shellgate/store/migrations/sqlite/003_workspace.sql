-- Workspaces: names are unique per (object type, workspace). Named rows move to 'default'.
ALTER TABLE objects ADD COLUMN workspace TEXT NOT NULL DEFAULT '';
UPDATE objects SET workspace = 'default' WHERE name IS NOT NULL OR scope IS NOT NULL;
DROP INDEX objects_name_uq;
CREATE UNIQUE INDEX objects_name_uq ON objects (object_type, workspace, name)
    WHERE name IS NOT NULL;
CREATE INDEX objects_list_idx ON objects (object_type, workspace, created_at_ms, id);
