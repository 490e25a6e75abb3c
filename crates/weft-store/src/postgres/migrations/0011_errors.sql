-- Error analytics: failed steps grouped by fingerprint (flow, step, connector, error class),
-- with a count per day for the trend.
CREATE TABLE error_groups (
    tenant_id    TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    flow_id      TEXT NOT NULL,
    flow_name    TEXT NOT NULL,
    step_id      TEXT NOT NULL,
    connector    TEXT NOT NULL,
    class        TEXT NOT NULL,
    message      TEXT NOT NULL,
    count        BIGINT NOT NULL,
    first_seen   BIGINT NOT NULL,
    last_seen    BIGINT NOT NULL,
    sample_run   TEXT NOT NULL,
    PRIMARY KEY (tenant_id, workspace_id, fingerprint)
);
CREATE INDEX error_groups_by_last_seen ON error_groups (tenant_id, workspace_id, last_seen);
CREATE TABLE error_group_days (
    tenant_id    TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    day          BIGINT NOT NULL,
    count        BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, workspace_id, fingerprint, day)
);
ALTER TABLE error_groups ENABLE ROW LEVEL SECURITY;
ALTER TABLE error_groups FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON error_groups
    USING (tenant_id = current_setting('weft.tenant_id', true) OR current_setting('weft.system', true) = 'on')
    WITH CHECK (tenant_id = current_setting('weft.tenant_id', true) OR current_setting('weft.system', true) = 'on');
ALTER TABLE error_group_days ENABLE ROW LEVEL SECURITY;
ALTER TABLE error_group_days FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON error_group_days
    USING (tenant_id = current_setting('weft.tenant_id', true) OR current_setting('weft.system', true) = 'on')
    WITH CHECK (tenant_id = current_setting('weft.tenant_id', true) OR current_setting('weft.system', true) = 'on');
