-- PostgreSQL schema, the same tables and columns as the SQLite one (a parity test checks it).
-- Every tenant table has tenant_id first in every key (unique and foreign-key checks bypass
-- row-level security, so a duplicate-key error must never reveal another tenant's value) and
-- forced row-level security (see the end of this file).

CREATE TABLE tenants (
    id                  TEXT PRIMARY KEY,
    name                TEXT NOT NULL,
    created_at          BIGINT NOT NULL,
    max_runs_per_month  BIGINT,
    max_active_flows    BIGINT,
    max_concurrent_runs BIGINT,
    max_webhook_rps     BIGINT,
    max_stored_bytes    BIGINT,
    weight              BIGINT NOT NULL DEFAULT 1,
    audit_seq           BIGINT NOT NULL DEFAULT 0,
    audit_head          TEXT NOT NULL DEFAULT ''
);

CREATE TABLE workspaces (
    tenant_id   TEXT NOT NULL REFERENCES tenants(id),
    id          TEXT NOT NULL,
    slug        TEXT NOT NULL,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, slug)
);

-- A person, across tenants (not tenant data: looked up at login).
CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT,
    created_at    BIGINT NOT NULL
);

CREATE TABLE members (
    tenant_id    TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    user_id      TEXT NOT NULL REFERENCES users(id),
    role         TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    accepted_at  BIGINT,
    PRIMARY KEY (tenant_id, workspace_id, user_id),
    FOREIGN KEY (tenant_id, workspace_id) REFERENCES workspaces(tenant_id, id)
);
CREATE INDEX members_by_user ON members (user_id);

CREATE TABLE tenant_owners (
    tenant_id  TEXT NOT NULL REFERENCES tenants(id),
    user_id    TEXT NOT NULL REFERENCES users(id),
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
);

CREATE TABLE api_keys (
    tenant_id     TEXT NOT NULL,
    workspace_id  TEXT NOT NULL,
    id            TEXT NOT NULL,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL,
    secret_hash   TEXT NOT NULL UNIQUE,
    created_at    BIGINT NOT NULL,
    last_used_at  BIGINT,
    revoked_at    BIGINT,
    created_by    TEXT,
    prefix        TEXT NOT NULL DEFAULT '',
    expires_at    BIGINT,
    PRIMARY KEY (tenant_id, workspace_id, id),
    FOREIGN KEY (tenant_id, workspace_id) REFERENCES workspaces(tenant_id, id)
);

-- Browser sessions belong to a user, not a tenant.
CREATE TABLE sessions (
    secret_hash  TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users(id),
    csrf_token   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);
CREATE INDEX sessions_by_user ON sessions (user_id);

CREATE TABLE flows (
    tenant_id         TEXT NOT NULL,
    workspace_id      TEXT NOT NULL,
    id                TEXT NOT NULL,
    name              TEXT NOT NULL,
    hook_id           TEXT NOT NULL UNIQUE,
    latest_version    BIGINT NOT NULL,
    published_version BIGINT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, workspace_id, id),
    UNIQUE (tenant_id, workspace_id, name),
    FOREIGN KEY (tenant_id, workspace_id) REFERENCES workspaces(tenant_id, id)
);

CREATE TABLE flow_versions (
    tenant_id    TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    flow_id      TEXT NOT NULL,
    version      BIGINT NOT NULL,
    definition   JSONB NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, workspace_id, flow_id, version),
    FOREIGN KEY (tenant_id, workspace_id, flow_id) REFERENCES flows(tenant_id, workspace_id, id) ON DELETE CASCADE
);

-- Queue churn: ready and leased work have small partial indexes; a lower fill factor leaves
-- room for HOT updates as runs move queued -> running -> finished.
CREATE TABLE runs (
    tenant_id     TEXT NOT NULL,
    workspace_id  TEXT NOT NULL,
    id            TEXT NOT NULL,
    flow_id       TEXT NOT NULL,
    flow_name     TEXT NOT NULL,
    flow_version  BIGINT NOT NULL,
    status        TEXT NOT NULL,
    trigger       JSONB NOT NULL,
    dedupe_key    TEXT,
    output        JSONB,
    error         TEXT,
    lease_owner   TEXT,
    lease_expires BIGINT,
    not_before    BIGINT NOT NULL,
    claims        BIGINT NOT NULL DEFAULT 0,
    created_at    BIGINT NOT NULL,
    started_at    BIGINT,
    finished_at   BIGINT,
    PRIMARY KEY (tenant_id, workspace_id, id)
) WITH (fillfactor = 80);
CREATE UNIQUE INDEX runs_dedupe ON runs (tenant_id, workspace_id, flow_id, dedupe_key) WHERE dedupe_key IS NOT NULL;
CREATE INDEX runs_ready ON runs (tenant_id, not_before, id) WHERE status = 'queued';
CREATE INDEX runs_running ON runs (tenant_id) WHERE status = 'running';
CREATE INDEX runs_leased ON runs (lease_expires) WHERE status = 'running';
CREATE INDEX runs_by_flow ON runs (tenant_id, workspace_id, flow_id, id);

CREATE TABLE run_steps (
    tenant_id    TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    run_id       TEXT NOT NULL,
    step_id      TEXT NOT NULL,
    idx          BIGINT NOT NULL,
    status       TEXT NOT NULL,
    attempts     BIGINT NOT NULL,
    output       JSONB,
    error        TEXT,
    started_at   BIGINT,
    finished_at  BIGINT,
    PRIMARY KEY (tenant_id, workspace_id, run_id, step_id)
);

CREATE TABLE run_logs (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id    TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    run_id       TEXT NOT NULL,
    ts           BIGINT NOT NULL,
    level        TEXT NOT NULL,
    step_id      TEXT,
    message      TEXT NOT NULL
);
CREATE INDEX run_logs_by_run ON run_logs (tenant_id, workspace_id, run_id, seq);

CREATE TABLE schedules (
    tenant_id    TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    flow_id      TEXT NOT NULL,
    next_tick_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, workspace_id, flow_id)
);
CREATE INDEX schedules_due ON schedules (next_tick_at);

CREATE TABLE tenant_usage (
    tenant_id     TEXT PRIMARY KEY,
    month         TEXT NOT NULL,
    runs_in_month BIGINT NOT NULL,
    stored_bytes  BIGINT NOT NULL
);

-- Append-only, hash-chained per tenant; `detail` is TEXT because the hash covers its bytes.
CREATE TABLE audit_log (
    tenant_id    TEXT NOT NULL,
    seq          BIGINT NOT NULL,
    ts           BIGINT NOT NULL,
    workspace_id TEXT,
    actor_kind   TEXT NOT NULL,
    actor_id     TEXT NOT NULL,
    via          TEXT,
    request_id   TEXT,
    action       TEXT NOT NULL,
    object_kind  TEXT NOT NULL,
    object_id    TEXT NOT NULL,
    detail       TEXT NOT NULL,
    prev_hash    TEXT NOT NULL,
    hash         TEXT NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);
CREATE INDEX audit_by_workspace ON audit_log (tenant_id, workspace_id, seq);

CREATE TABLE instance_settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Row-level security, forced (so it binds the table owner too), on every tenant table. A
-- transaction sees a tenant's rows only after `SELECT set_config('weft.tenant_id', $1, true)`;
-- cross-tenant system work (claims, reaping, hook lookup) says so with `weft.system = on`.
-- `current_setting(…, true)` reads '' (not NULL) after a transaction that set it: '' matches
-- no tenant id, so a pooled connection never carries a tenant over.
DO $$
DECLARE t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['workspaces', 'members', 'tenant_owners', 'api_keys', 'flows',
        'flow_versions', 'runs', 'run_steps', 'run_logs', 'schedules', 'tenant_usage', 'audit_log']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format($p$CREATE POLICY tenant_isolation ON %I
            USING (tenant_id = current_setting('weft.tenant_id', true) OR current_setting('weft.system', true) = 'on')
            WITH CHECK (tenant_id = current_setting('weft.tenant_id', true) OR current_setting('weft.system', true) = 'on')$p$, t);
    END LOOP;
END $$;
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants
    USING (id = current_setting('weft.tenant_id', true) OR current_setting('weft.system', true) = 'on')
    WITH CHECK (id = current_setting('weft.tenant_id', true) OR current_setting('weft.system', true) = 'on');
