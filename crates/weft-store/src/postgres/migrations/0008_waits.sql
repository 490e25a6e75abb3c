-- Durable waits, signals and sub-flows.
-- A parked run (`runs.status = 'waiting'`) keeps its `run_queue` row, unleased, with its wake
-- time in `not_before` (a far-future value when it waits for a signal or a child run only), so
-- a claim takes it by itself once it is due. `waiting` marks such rows for the small index that
-- finds the next wake-up; `runs` gets no index on its status (see 0002: its updates stay HOT).
ALTER TABLE run_queue ADD COLUMN waiting BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX run_queue_waiting ON run_queue (not_before) WHERE waiting;
-- A sub-flow's run names the run that started it (same workspace). Never updated, so the
-- index costs the HOT updates of `runs` nothing.
ALTER TABLE runs ADD COLUMN parent_run TEXT;
CREATE INDEX runs_by_parent ON runs (tenant_id, workspace_id, parent_run) WHERE parent_run IS NOT NULL;
-- Signals delivered to a run: one per name (single-use), kept until the run is deleted.
CREATE TABLE run_signals (
    tenant_id    TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    run_id       TEXT NOT NULL,
    name         TEXT NOT NULL,
    payload      JSONB NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, workspace_id, run_id, name)
);
ALTER TABLE run_signals ENABLE ROW LEVEL SECURITY;
ALTER TABLE run_signals FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON run_signals
    USING (tenant_id = current_setting('weft.tenant_id', true) OR current_setting('weft.system', true) = 'on')
    WITH CHECK (tenant_id = current_setting('weft.tenant_id', true) OR current_setting('weft.system', true) = 'on');
