-- Alerting: a workspace's notification rules (spec: what they watch and where they notify, as
-- JSON the engine reads), one row per incident of a rule (its de-duplication state), and
-- an outbox of notifications to deliver (written in the transaction that decides to notify).
CREATE TABLE alert_rules (
    tenant_id    TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    name         TEXT NOT NULL,
    spec         TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, workspace_id, name)
);
CREATE TABLE alert_incidents (
    tenant_id    TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    rule         TEXT NOT NULL,
    incident     TEXT NOT NULL,
    first_at     BIGINT NOT NULL,
    last_at      BIGINT NOT NULL,
    notified_at  BIGINT NOT NULL,
    suppressed   BIGINT NOT NULL DEFAULT 0,
    -- For rules that need N occurrences within a window (error_spike): the window's start
    -- and its count so far.
    window_start BIGINT NOT NULL DEFAULT 0,
    window_count BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, workspace_id, rule, incident)
);
CREATE TABLE alert_outbox (
    seq          BIGSERIAL PRIMARY KEY,
    tenant_id    TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    rule         TEXT NOT NULL,
    incident     TEXT NOT NULL,
    payload      TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    next_at      BIGINT NOT NULL,
    attempts     BIGINT NOT NULL DEFAULT 0,
    delivered_at BIGINT,
    error        TEXT
);
CREATE INDEX alert_outbox_due ON alert_outbox (next_at) WHERE delivered_at IS NULL;
CREATE INDEX alert_outbox_by_rule ON alert_outbox (tenant_id, workspace_id, rule, seq);
ALTER TABLE alert_rules ENABLE ROW LEVEL SECURITY;
ALTER TABLE alert_rules FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON alert_rules
    USING (tenant_id = current_setting('weft.tenant_id', true) OR current_setting('weft.system', true) = 'on')
    WITH CHECK (tenant_id = current_setting('weft.tenant_id', true) OR current_setting('weft.system', true) = 'on');
ALTER TABLE alert_incidents ENABLE ROW LEVEL SECURITY;
ALTER TABLE alert_incidents FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON alert_incidents
    USING (tenant_id = current_setting('weft.tenant_id', true) OR current_setting('weft.system', true) = 'on')
    WITH CHECK (tenant_id = current_setting('weft.tenant_id', true) OR current_setting('weft.system', true) = 'on');
ALTER TABLE alert_outbox ENABLE ROW LEVEL SECURITY;
ALTER TABLE alert_outbox FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON alert_outbox
    USING (tenant_id = current_setting('weft.tenant_id', true) OR current_setting('weft.system', true) = 'on')
    WITH CHECK (tenant_id = current_setting('weft.tenant_id', true) OR current_setting('weft.system', true) = 'on');
