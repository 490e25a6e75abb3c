-- Version 17: one row per run per write instead of one per log line. A two-step run wrote six
-- lines (run and step events), each a heap row with three index entries (by seq, by run, by
-- workspace): two thirds of the index entries a run made. Now a row holds the lines one write
-- added to one run as parallel arrays, the primary key is (tenant, workspace, seq), which
-- workspace-wide search and the live feed walk, and a second index finds a run's rows.
-- A line's id is seq * 1024 + its position in the row (rows hold at most 1024 lines), so ids
-- still grow with commit order within a workspace and a run. Old lines keep their order: each
-- becomes a row of one, with its old seq (its id becomes seq * 1024; a client resuming a live
-- stream from an id given before the upgrade is sent those lines again, never fewer).
CREATE TABLE run_logs_v17 (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY,
    tenant_id    TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    run_id       TEXT NOT NULL,
    ts           BIGINT[] NOT NULL,
    level        TEXT[] NOT NULL,
    step_id      TEXT[] NOT NULL,
    message      TEXT[] NOT NULL,
    event        TEXT[] NOT NULL
) WITH (autovacuum_vacuum_insert_scale_factor = 0.05, autovacuum_vacuum_cost_delay = 0);
INSERT INTO run_logs_v17 (seq, tenant_id, workspace_id, run_id, ts, level, step_id, message, event)
    OVERRIDING SYSTEM VALUE
    SELECT seq, tenant_id, workspace_id, run_id, ARRAY[ts], ARRAY[level], ARRAY[step_id], ARRAY[message], ARRAY[event]
    FROM run_logs ORDER BY seq;
SELECT setval(pg_get_serial_sequence('run_logs_v17', 'seq'), (SELECT COALESCE(MAX(seq), 0) + 1 FROM run_logs_v17), false);
DROP TABLE run_logs;
ALTER TABLE run_logs_v17 RENAME TO run_logs;
ALTER TABLE run_logs ADD CONSTRAINT run_logs_pkey PRIMARY KEY (tenant_id, workspace_id, seq);
CREATE INDEX run_logs_by_run ON run_logs (tenant_id, workspace_id, run_id, seq);
ALTER TABLE run_logs ENABLE ROW LEVEL SECURITY;
ALTER TABLE run_logs FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON run_logs
    USING (tenant_id = current_setting('weft.tenant_id', true) OR current_setting('weft.system', true) = 'on')
    WITH CHECK (tenant_id = current_setting('weft.tenant_id', true) OR current_setting('weft.system', true) = 'on');
