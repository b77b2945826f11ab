-- Compare-and-swap column. The default backfills every existing row to version 1.
ALTER TABLE objects ADD COLUMN resource_version INTEGER NOT NULL DEFAULT 1;
