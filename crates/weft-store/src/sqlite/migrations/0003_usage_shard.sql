-- Parity with PostgreSQL, whose usage counters are sharded per connection; SQLite has one
-- writer, so it always uses shard 0.
ALTER TABLE tenant_usage ADD COLUMN shard INTEGER NOT NULL DEFAULT 0;
