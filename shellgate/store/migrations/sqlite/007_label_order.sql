-- Label selectors that page in index order: the label table carries the list order
-- (object type, workspace, created_at_ms, id), so a requirement `key = ? AND value = ?`
-- (or `key = ?`) is walked in (created_at_ms, id) order and a page stops after limit + 1
-- rows, whether 0.1 % or every row matches. 005's table gave ids only, and every page
-- sorted all the matching rows.
DROP TRIGGER object_labels_on_insert;
DROP TRIGGER object_labels_on_update;
DROP TRIGGER object_labels_on_delete;
DROP TABLE object_labels;
-- The primary key orders equality across workspaces; the indexes order it in one workspace,
-- and existence (`key`) across workspaces and in one. Each also answers a probe for one
-- object (every column of the list order is known then), which the other requirements of
-- a selector use.
CREATE TABLE object_labels (
    key           TEXT NOT NULL,
    value         TEXT NOT NULL,
    object_type   TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    object_id     TEXT NOT NULL,
    workspace     TEXT NOT NULL,
    PRIMARY KEY (key, value, object_type, created_at_ms, object_id)
) WITHOUT ROWID;
CREATE INDEX object_labels_workspace_idx ON object_labels (key, value, object_type, workspace, created_at_ms, object_id);
CREATE INDEX object_labels_key_idx ON object_labels (key, object_type, created_at_ms, object_id);
CREATE INDEX object_labels_key_workspace_idx ON object_labels (key, object_type, workspace, created_at_ms, object_id);
-- Rows written before this migration.
INSERT INTO object_labels (key, value, object_type, created_at_ms, object_id, workspace)
    SELECT label.key, label.value, objects.object_type, objects.created_at_ms, objects.id, objects.workspace
    FROM objects, json_each(objects.labels) AS label;
-- Kept in the statement that writes the row. The update trigger names every column the
-- table copies, so it fires only when one of them is in the UPDATE's SET (the CAS update
-- names labels only when they changed). Removal is by (key, object_type, created_at_ms,
-- object_id), the key index, for each key of the old labels: every value of it goes.
-- (each trigger on one line: the migration runner splits statements at a line-ending ";")
CREATE TRIGGER object_labels_on_insert AFTER INSERT ON objects BEGIN INSERT INTO object_labels (key, value, object_type, created_at_ms, object_id, workspace) SELECT key, value, NEW.object_type, NEW.created_at_ms, NEW.id, NEW.workspace FROM json_each(NEW.labels); END;
CREATE TRIGGER object_labels_on_update AFTER UPDATE OF labels, object_type, created_at_ms, id, workspace ON objects WHEN NEW.labels IS NOT OLD.labels OR NEW.object_type IS NOT OLD.object_type OR NEW.created_at_ms IS NOT OLD.created_at_ms OR NEW.id IS NOT OLD.id OR NEW.workspace IS NOT OLD.workspace BEGIN DELETE FROM object_labels WHERE key IN (SELECT key FROM json_each(OLD.labels)) AND object_type = OLD.object_type AND created_at_ms = OLD.created_at_ms AND object_id = OLD.id; INSERT INTO object_labels (key, value, object_type, created_at_ms, object_id, workspace) SELECT key, value, NEW.object_type, NEW.created_at_ms, NEW.id, NEW.workspace FROM json_each(NEW.labels); END;
CREATE TRIGGER object_labels_on_delete AFTER DELETE ON objects BEGIN DELETE FROM object_labels WHERE key IN (SELECT key FROM json_each(OLD.labels)) AND object_type = OLD.object_type AND created_at_ms = OLD.created_at_ms AND object_id = OLD.id; END;
-- Statistics for the shape of the data, not its size today (as 005): a label key is shared
-- by many rows, a (key, value) by fewer, a (key, value, type, time) by one.
DELETE FROM sqlite_stat1 WHERE tbl = 'object_labels';
INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES ('object_labels', 'sqlite_autoindex_object_labels_1', '200000 20000 100 100 1 1'), ('object_labels', 'object_labels_workspace_idx', '200000 20000 100 100 25 1 1'), ('object_labels', 'object_labels_key_idx', '200000 20000 20000 1 1'), ('object_labels', 'object_labels_key_workspace_idx', '200000 20000 20000 5000 1 1');
ANALYZE sqlite_master;
