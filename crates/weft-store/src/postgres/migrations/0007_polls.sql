-- Poll triggers: one row per flow (not per version, so the cursor survives new versions and
-- restarts), claimed with a lease so one worker at a time polls it; and the ids of the items
-- each has seen, so an item starts one run however often, and by however many workers, it is
-- listed.
CREATE TABLE polls (
    tenant_id      TEXT NOT NULL,
    workspace_id   TEXT NOT NULL,
    flow_id        TEXT NOT NULL,
    next_at        BIGINT,
    cursor         TEXT,
    primed         BOOLEAN NOT NULL DEFAULT false,
    lease_owner    TEXT,
    lease_until    BIGINT,
    paused         TEXT,
    last_polled_at BIGINT,
    last_error     TEXT,
    polls          BIGINT NOT NULL DEFAULT 0,
    started        BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, workspace_id, flow_id)
);
CREATE INDEX polls_due ON polls (next_at) WHERE next_at IS NOT NULL AND paused IS NULL;
CREATE TABLE poll_seen (
    tenant_id    TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    flow_id      TEXT NOT NULL,
    item_key     TEXT NOT NULL,
    seen_at      BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, workspace_id, flow_id, item_key)
);
CREATE INDEX poll_seen_age ON poll_seen (tenant_id, workspace_id, flow_id, seen_at);

ALTER TABLE polls ENABLE ROW LEVEL SECURITY;
ALTER TABLE polls FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON polls
    USING (tenant_id = current_setting('weft.tenant_id', true) OR current_setting('weft.system', true) = 'on')
    WITH CHECK (tenant_id = current_setting('weft.tenant_id', true) OR current_setting('weft.system', true) = 'on');
ALTER TABLE poll_seen ENABLE ROW LEVEL SECURITY;
ALTER TABLE poll_seen FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON poll_seen
    USING (tenant_id = current_setting('weft.tenant_id', true) OR current_setting('weft.system', true) = 'on')
    WITH CHECK (tenant_id = current_setting('weft.tenant_id', true) OR current_setting('weft.system', true) = 'on');
