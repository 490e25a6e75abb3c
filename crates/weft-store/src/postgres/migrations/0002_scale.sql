-- Usage counters are sharded: every run insert and finish adds to its tenant's usage, and one
-- row per tenant made all of a tenant's writers queue on one row lock. Each connection now adds
-- to the shard `pg_backend_pid() % 16`; readers sum the shards.
ALTER TABLE tenant_usage ADD COLUMN shard INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tenant_usage DROP CONSTRAINT tenant_usage_pkey;
ALTER TABLE tenant_usage ADD PRIMARY KEY (tenant_id, shard);
