-- Every tenant-owned row carries tenant_id (and workspace_id), first in every key, so every
-- lookup is scoped and, on PostgreSQL later, row-level security can back the scoping up.

CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE workspaces (
    tenant_id   TEXT NOT NULL REFERENCES tenants(id),
    id          TEXT NOT NULL,
    slug        TEXT NOT NULL,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, slug)
);

CREATE TABLE users (
    tenant_id     TEXT NOT NULL REFERENCES tenants(id),
    id            TEXT NOT NULL,
    email         TEXT NOT NULL,
    password_hash TEXT,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, email)
);

CREATE TABLE api_keys (
    tenant_id     TEXT NOT NULL,
    workspace_id  TEXT NOT NULL,
    id            TEXT NOT NULL,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL,
    secret_hash   TEXT NOT NULL UNIQUE,
    created_at    INTEGER NOT NULL,
    last_used_at  INTEGER,
    revoked_at    INTEGER,
    PRIMARY KEY (tenant_id, workspace_id, id),
    FOREIGN KEY (tenant_id, workspace_id) REFERENCES workspaces(tenant_id, id)
);

CREATE TABLE flows (
    tenant_id         TEXT NOT NULL,
    workspace_id      TEXT NOT NULL,
    id                TEXT NOT NULL,
    name              TEXT NOT NULL,
    hook_id           TEXT NOT NULL UNIQUE,
    latest_version    INTEGER NOT NULL,
    published_version INTEGER,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, workspace_id, id),
    UNIQUE (tenant_id, workspace_id, name),
    FOREIGN KEY (tenant_id, workspace_id) REFERENCES workspaces(tenant_id, id)
);

CREATE TABLE flow_versions (
    tenant_id    TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    flow_id      TEXT NOT NULL,
    version      INTEGER NOT NULL,
    definition   TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, workspace_id, flow_id, version),
    FOREIGN KEY (tenant_id, workspace_id, flow_id) REFERENCES flows(tenant_id, workspace_id, id) ON DELETE CASCADE
);

CREATE TABLE runs (
    tenant_id     TEXT NOT NULL,
    workspace_id  TEXT NOT NULL,
    id            TEXT NOT NULL,
    flow_id       TEXT NOT NULL,
    flow_name     TEXT NOT NULL,
    flow_version  INTEGER NOT NULL,
    status        TEXT NOT NULL,
    trigger       TEXT NOT NULL,
    dedupe_key    TEXT,
    output        TEXT,
    error         TEXT,
    lease_owner   TEXT,
    lease_expires INTEGER,
    not_before    INTEGER NOT NULL,
    claims        INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    started_at    INTEGER,
    finished_at   INTEGER,
    PRIMARY KEY (tenant_id, workspace_id, id)
);
CREATE UNIQUE INDEX runs_dedupe ON runs (tenant_id, workspace_id, flow_id, dedupe_key) WHERE dedupe_key IS NOT NULL;
-- Ready work only: the index stays small however many finished runs pile up.
CREATE INDEX runs_ready ON runs (not_before, id) WHERE status = 'queued';
CREATE INDEX runs_leased ON runs (lease_expires) WHERE status = 'running';
CREATE INDEX runs_by_flow ON runs (tenant_id, workspace_id, flow_id, id);

CREATE TABLE run_steps (
    tenant_id    TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    run_id       TEXT NOT NULL,
    step_id      TEXT NOT NULL,
    idx          INTEGER NOT NULL,
    status       TEXT NOT NULL,
    attempts     INTEGER NOT NULL,
    output       TEXT,
    error        TEXT,
    started_at   INTEGER,
    finished_at  INTEGER,
    PRIMARY KEY (tenant_id, workspace_id, run_id, step_id)
);

CREATE TABLE run_logs (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id    TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    run_id       TEXT NOT NULL,
    ts           INTEGER NOT NULL,
    level        TEXT NOT NULL,
    step_id      TEXT,
    message      TEXT NOT NULL
);
CREATE INDEX run_logs_by_run ON run_logs (tenant_id, workspace_id, run_id, seq);

CREATE TABLE schedules (
    tenant_id    TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    flow_id      TEXT NOT NULL,
    next_tick_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, workspace_id, flow_id)
);
CREATE INDEX schedules_due ON schedules (next_tick_at);
