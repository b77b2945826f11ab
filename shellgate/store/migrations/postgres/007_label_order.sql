-- Label selectors that page in index order, as SQLite's 007: the label table carries the
-- list order (object type, workspace, created_at_ms, id), so a requirement
-- `key = $1 AND value = $2` (or `key = $1`) is walked in (created_at_ms, id) order and a page
-- stops after limit + 1 rows, whether 0.1 % or every row matches. With 005's GIN index a
-- rare value was a bitmap scan whose matches were all sorted, and a common one a walk of
-- the objects' order index filtering every row (9,907 rows removed for a page at 100k).
-- The primary key orders equality across workspaces; the indexes order it in one workspace,
-- and existence (`key`) across workspaces and in one.
CREATE TABLE object_labels (
    key           TEXT NOT NULL,
    value         TEXT NOT NULL,
    object_type   TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    object_id     TEXT NOT NULL,
    workspace     TEXT NOT NULL,
    PRIMARY KEY (key, value, object_type, created_at_ms, object_id)
);
CREATE INDEX object_labels_workspace_idx ON object_labels (key, value, object_type, workspace, created_at_ms, object_id);
CREATE INDEX object_labels_key_idx ON object_labels (key, object_type, created_at_ms, object_id);
CREATE INDEX object_labels_key_workspace_idx ON object_labels (key, object_type, workspace, created_at_ms, object_id);
-- Rows written before this migration.
INSERT INTO object_labels (key, value, object_type, created_at_ms, object_id, workspace)
    SELECT label.key, label.value, objects.object_type, objects.created_at_ms, objects.id, objects.workspace
    FROM objects, jsonb_each_text(objects.labels) AS label;
-- Kept in the statement that writes the row, by one function. It writes object_labels
-- only: no NOTIFY (the writing statement announces the row, PostgresDialect.announced), so
-- a write is still announced exactly once. Rows go by (key, object_type, created_at_ms,
-- object_id), the key index (`key = ANY(array)`: an `IN (SELECT ...)` got a generic plan
-- that scanned the table); an object has one value per key, so that removes exactly the
-- label. A label change that keeps the copied columns removes and adds only the labels that
-- differ: changing one of three labels writes two rows, not six.
CREATE FUNCTION shellgate_object_labels() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    same_place boolean := TG_OP = 'UPDATE'
        AND NEW.object_type = OLD.object_type AND NEW.created_at_ms = OLD.created_at_ms
        AND NEW.id = OLD.id AND NEW.workspace = OLD.workspace;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        DELETE FROM object_labels
        WHERE key = ANY(ARRAY(
                SELECT label.key FROM jsonb_each_text(OLD.labels) AS label
                WHERE NOT (same_place AND NEW.labels @> jsonb_build_object(label.key, label.value))))
            AND object_type = OLD.object_type
            AND created_at_ms = OLD.created_at_ms
            AND object_id = OLD.id;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO object_labels (key, value, object_type, created_at_ms, object_id, workspace)
            SELECT label.key, label.value, NEW.object_type, NEW.created_at_ms, NEW.id, NEW.workspace
            FROM jsonb_each_text(NEW.labels) AS label
            WHERE NOT (same_place AND OLD.labels @> jsonb_build_object(label.key, label.value));
    END IF;
    RETURN NULL;
END;
$$;
-- The WHEN conditions keep the function from being called at all when there is nothing to
-- do (a row without labels; an update that changes none of the copied columns). The update
-- trigger names every column the table copies, so it is not even considered when none of
-- them is in the UPDATE's SET: the CAS update names labels only when they changed (cas_write).
CREATE TRIGGER object_labels_on_insert AFTER INSERT ON objects FOR EACH ROW
    WHEN (NEW.labels <> '{}'::jsonb)
    EXECUTE FUNCTION shellgate_object_labels();
CREATE TRIGGER object_labels_on_update AFTER UPDATE OF labels, object_type, created_at_ms, id, workspace ON objects FOR EACH ROW
    WHEN (NEW.labels IS DISTINCT FROM OLD.labels OR NEW.object_type IS DISTINCT FROM OLD.object_type
        OR NEW.created_at_ms IS DISTINCT FROM OLD.created_at_ms OR NEW.id IS DISTINCT FROM OLD.id
        OR NEW.workspace IS DISTINCT FROM OLD.workspace)
    EXECUTE FUNCTION shellgate_object_labels();
CREATE TRIGGER object_labels_on_delete AFTER DELETE ON objects FOR EACH ROW
    WHEN (OLD.labels <> '{}'::jsonb)
    EXECUTE FUNCTION shellgate_object_labels();
-- Selectors no longer use the GIN index: every equality, set or existence requirement that
-- leads walks object_labels, the others are tested on a row already fetched (by id from the
-- walk, or from the order index for a negative-only selector, which no index can serve).
-- Keeping it would cost every write of labels a GIN update and leave the planner a second
-- way to answer a selector, with a sort of every match.
DROP INDEX IF EXISTS objects_labels_gin;
-- Statistics now, so the first lists after the migration already walk the new table.
ANALYZE object_labels;
