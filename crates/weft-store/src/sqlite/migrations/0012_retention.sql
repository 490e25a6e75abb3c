-- Retention: finished runs of a workspace older than this many days are deleted (NULL: kept).
ALTER TABLE workspaces ADD COLUMN retention_days INTEGER;
