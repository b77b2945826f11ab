-- The change feed's NOTIFY moves from a row trigger into the store's writing statements
-- (PostgresDialect.announced): calling the trigger cost each write about as much as the rest
-- of its statement. Rows written outside the store are no longer announced; watchers still
-- re-read what they watch when their feed reconnects.
DROP TRIGGER IF EXISTS objects_notify ON objects;
DROP FUNCTION IF EXISTS shellgate_objects_notify();
