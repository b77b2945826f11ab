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
