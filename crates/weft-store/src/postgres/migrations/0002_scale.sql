-- Usage counters are sharded: every run insert and finish adds to its tenant's usage, and one
-- row per tenant made all of a tenant's writers queue on one row lock. Each connection now adds
-- to the shard `pg_backend_pid() % 256`; readers sum the shards.
ALTER TABLE tenant_usage ADD COLUMN shard INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tenant_usage DROP CONSTRAINT tenant_usage_pkey;
ALTER TABLE tenant_usage ADD PRIMARY KEY (tenant_id, shard);

-- The queue moves out of `runs`. A run has a row here while it is queued or running, deleted
-- when it ends; `runs` keeps the history. Claiming used to flip `runs.status` under partial
-- indexes on it, so every claim and finish left dead entries in those indexes that each later
-- claim walked past until vacuum caught up with a table growing without bound. Now:
-- * `runs` updates touch no indexed column, so they are HOT and leave its indexes alone;
-- * this table stays as small as the backlog, so vacuuming it often is cheap (the settings
--   below: vacuum after 1,000 dead rows, without cost-based sleeping).
CREATE TABLE run_queue (
    tenant_id     TEXT NOT NULL,
    workspace_id  TEXT NOT NULL,
    run_id        TEXT NOT NULL,
    not_before    BIGINT NOT NULL,
    lease_owner   TEXT,
    lease_expires BIGINT,
    PRIMARY KEY (tenant_id, workspace_id, run_id)
) WITH (fillfactor = 70,
        autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
        autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 1000,
        autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 1000,
        autovacuum_vacuum_cost_delay = 0);
CREATE INDEX run_queue_ready ON run_queue (tenant_id, not_before, run_id) WHERE lease_owner IS NULL;
CREATE INDEX run_queue_running ON run_queue (tenant_id) WHERE lease_owner IS NOT NULL;
CREATE INDEX run_queue_owner ON run_queue (lease_owner, lease_expires) WHERE lease_owner IS NOT NULL;
INSERT INTO run_queue (tenant_id, workspace_id, run_id, not_before, lease_owner, lease_expires)
    SELECT tenant_id, workspace_id, id, not_before, lease_owner, lease_expires FROM runs
    WHERE status IN ('queued', 'running');
UPDATE runs SET lease_owner = NULL, lease_expires = NULL WHERE lease_owner IS NOT NULL;
DROP INDEX runs_ready;
DROP INDEX runs_running;
DROP INDEX runs_leased;
-- Lookups of one run by (tenant, workspace, id) were planned on runs_by_flow (tenant,
-- workspace, flow, id), filtering on `id` across the whole workspace, whenever statistics were
-- missing or young (a fresh database under load): 150 buffers per finish instead of 4. With
-- the flow first, only queries that name a flow can use it (flow ids are unique on their own).
DROP INDEX runs_by_flow;
CREATE INDEX runs_by_flow ON runs (flow_id, id);
-- Room on each page for the two updates of a run (start, finish) to stay HOT.
ALTER TABLE runs SET (fillfactor = 70);
ALTER TABLE run_queue ENABLE ROW LEVEL SECURITY;
ALTER TABLE run_queue FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON run_queue
    USING (tenant_id = current_setting('weft.tenant_id', true) OR current_setting('weft.system', true) = 'on')
    WITH CHECK (tenant_id = current_setting('weft.tenant_id', true) OR current_setting('weft.system', true) = 'on');

-- Rate limits shared by every process (GCRA: one theoretical arrival time per key, in µs).
-- Unlogged: the state is worth nothing after a crash (limits just start afresh), and commits
-- that touch only unlogged tables do not wait for a WAL flush.
CREATE UNLOGGED TABLE rate_limits (
    key TEXT PRIMARY KEY,
    tat BIGINT NOT NULL
);
