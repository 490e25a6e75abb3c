-- Event watches: a run parked on `wait_for_event` waits for an event published in its
-- workspace, named `event` and with key `key` (any key when `key` is NULL). One watch per run
-- and event; kept until the run stops watching or is deleted.
CREATE TABLE event_watches (
    tenant_id    TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    run_id       TEXT NOT NULL,
    event        TEXT NOT NULL,
    key          TEXT,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, workspace_id, run_id, event)
);
CREATE INDEX event_watches_by_event ON event_watches (tenant_id, workspace_id, event, key);
