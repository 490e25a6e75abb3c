-- Event watches: a run parked on `wait_for_event` waits for an event published in its
-- workspace, named `event` and with key `key` (any key when `key` is NULL). One watch per run
-- and event; kept until the run stops watching or is deleted.
CREATE TABLE event_watches (
    tenant_id    TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    run_id       TEXT NOT NULL,
    event        TEXT NOT NULL,
    key          TEXT,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, workspace_id, run_id, event)
);
CREATE INDEX event_watches_by_event ON event_watches (tenant_id, workspace_id, event, key);
ALTER TABLE event_watches ENABLE ROW LEVEL SECURITY;
ALTER TABLE event_watches FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON event_watches
    USING (tenant_id = current_setting('weft.tenant_id', true) OR current_setting('weft.system', true) = 'on')
    WITH CHECK (tenant_id = current_setting('weft.tenant_id', true) OR current_setting('weft.system', true) = 'on');
