-- Poll triggers: one row per flow (not per version, so the cursor survives new versions and
-- restarts), claimed with a lease so one process at a time polls it; and the ids of the items
-- each has seen, so an item starts one run however often it is listed.
CREATE TABLE polls (
    tenant_id      TEXT NOT NULL,
    workspace_id   TEXT NOT NULL,
    flow_id        TEXT NOT NULL,
    next_at        INTEGER,
    cursor         TEXT,
    primed         INTEGER NOT NULL DEFAULT 0,
    lease_owner    TEXT,
    lease_until    INTEGER,
    paused         TEXT,
    last_polled_at INTEGER,
    last_error     TEXT,
    polls          INTEGER NOT NULL DEFAULT 0,
    started        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, workspace_id, flow_id)
);
CREATE INDEX polls_due ON polls (next_at) WHERE next_at IS NOT NULL AND paused IS NULL;
CREATE TABLE poll_seen (
    tenant_id    TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    flow_id      TEXT NOT NULL,
    item_key     TEXT NOT NULL,
    seen_at      INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, workspace_id, flow_id, item_key)
);
CREATE INDEX poll_seen_age ON poll_seen (tenant_id, workspace_id, flow_id, seen_at);
