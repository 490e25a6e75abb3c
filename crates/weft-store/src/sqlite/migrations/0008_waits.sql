-- Durable waits, signals and sub-flows.
-- A run can park (`waiting`) until a time (`not_before`), a signal or a child run; a signal-only
-- wait stores a far-future `not_before` that is never due. Waiting runs are not claimable; a
-- small partial index finds the ones whose time has come.
CREATE INDEX runs_waiting ON runs (not_before) WHERE status = 'waiting';
-- A sub-flow's run names the run that started it (same workspace).
ALTER TABLE runs ADD COLUMN parent_run TEXT;
CREATE INDEX runs_by_parent ON runs (tenant_id, workspace_id, parent_run) WHERE parent_run IS NOT NULL;
-- Signals delivered to a run: one per name (single-use), kept until the run is deleted.
CREATE TABLE run_signals (
    tenant_id    TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    run_id       TEXT NOT NULL,
    name         TEXT NOT NULL,
    payload      TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, workspace_id, run_id, name)
);
