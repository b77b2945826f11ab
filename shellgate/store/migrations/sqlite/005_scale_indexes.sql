-- Indexes that keep every query flat as the table grows.
-- Lists across every workspace (the resync, the sweep, wildcard hints, all_workspaces lists)
-- page in (created_at_ms, id) order; without the workspace the list index cannot give it.
CREATE INDEX IF NOT EXISTS objects_type_order_idx ON objects (object_type, created_at_ms, id);
-- The /metrics gauge counts rows per status column value: a covering-index GROUP BY.
CREATE INDEX IF NOT EXISTS objects_type_status_idx ON objects (object_type, status);
-- Label selectors: one row per (object, label key) in an indexed table, kept by triggers in
-- the statement (and so the transaction) that writes the labels, so it can never disagree
-- with the labels column. Equality, set and existence requirements look ids up in it.
CREATE TABLE object_labels (
    object_id TEXT NOT NULL,
    key       TEXT NOT NULL,
    value     TEXT NOT NULL,
    PRIMARY KEY (object_id, key)
) WITHOUT ROWID;
CREATE INDEX object_labels_key_value_idx ON object_labels (key, value, object_id);
INSERT INTO object_labels (object_id, key, value)
    SELECT objects.id, label.key, label.value FROM objects, json_each(objects.labels) AS label;
-- (each trigger on one line: the migration runner splits statements at a line-ending ";")
CREATE TRIGGER object_labels_on_insert AFTER INSERT ON objects BEGIN INSERT INTO object_labels (object_id, key, value) SELECT NEW.id, key, value FROM json_each(NEW.labels); END;
CREATE TRIGGER object_labels_on_update AFTER UPDATE OF labels ON objects WHEN NEW.labels IS NOT OLD.labels BEGIN DELETE FROM object_labels WHERE object_id = OLD.id; INSERT INTO object_labels (object_id, key, value) SELECT NEW.id, key, value FROM json_each(NEW.labels); END;
CREATE TRIGGER object_labels_on_delete AFTER DELETE ON objects BEGIN DELETE FROM object_labels WHERE object_id = OLD.id; END;
-- Planner statistics that describe the shape of the data rather than its size today: a label
-- (key, value) is selective, an object type is not. Without statistics SQLite walks the
-- order index and probes every row for a selector; with these it looks the label up first
-- and sorts only the rows that match. Written by hand (a documented use of sqlite_stat1), so
-- the plan does not depend on when ANALYZE last ran; a later ANALYZE replaces them with the
-- real figures, which lead to the same plans once the table holds data.
ANALYZE object_labels;
DELETE FROM sqlite_stat1 WHERE tbl IN ('objects', 'object_labels');
INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES ('object_labels', 'object_labels_key_value_idx', '200000 20000 100 1'), ('objects', 'sqlite_autoindex_objects_1', '100000 1'), ('objects', 'objects_type_order_idx', '100000 20000 1 1'), ('objects', 'objects_list_idx', '100000 20000 5000 1 1'), ('objects', 'objects_type_status_idx', '100000 20000 5000'), ('objects', 'objects_name_uq', '100000 20000 5000 1');
ANALYZE sqlite_master;
