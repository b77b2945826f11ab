-- The change feed: every committed write to objects notifies the LISTENers of every replica.
-- NOTIFY is delivered at commit, so a watcher never hears of a write that rolled back.
CREATE FUNCTION shellgate_objects_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r objects%ROWTYPE;
BEGIN
    IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
    PERFORM pg_notify('shellgate_objects', json_build_object(
        't', r.object_type,
        'i', r.id,
        'v', CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE r.resource_version END,
        'd', TG_OP = 'DELETE',
        'm', r.updated_at_ms
    )::text);
    RETURN NULL;
END;
$$;
CREATE TRIGGER objects_notify AFTER INSERT OR UPDATE OR DELETE ON objects
    FOR EACH ROW EXECUTE FUNCTION shellgate_objects_notify();
