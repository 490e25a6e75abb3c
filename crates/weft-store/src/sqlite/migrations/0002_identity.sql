-- Identity, memberships, sessions, plan limits, usage, the audit trail, and fair claiming.

-- A user is a person, across tenants: one email, one password. What they may do lives in
-- `members` (tenant_id first, like every tenant table).
ALTER TABLE users RENAME TO users_v1;
CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT,
    created_at    INTEGER NOT NULL
);
INSERT OR IGNORE INTO users (id, email, password_hash, created_at)
    SELECT id, lower(email), password_hash, created_at FROM users_v1 ORDER BY created_at;

CREATE TABLE members (
    tenant_id    TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    user_id      TEXT NOT NULL REFERENCES users(id),
    role         TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    -- NULL while an invitation of someone from another tenant waits for them to accept it.
    accepted_at  INTEGER,
    PRIMARY KEY (tenant_id, workspace_id, user_id),
    FOREIGN KEY (tenant_id, workspace_id) REFERENCES workspaces(tenant_id, id)
);
CREATE INDEX members_by_user ON members (user_id);
-- Every v1 user owned its tenant's workspaces.
INSERT OR IGNORE INTO members (tenant_id, workspace_id, user_id, role, created_at, accepted_at)
    SELECT o.tenant_id, w.id, u.id, 'owner', o.created_at, o.created_at
    FROM users_v1 o JOIN users u ON u.email = lower(o.email) JOIN workspaces w ON w.tenant_id = o.tenant_id;
DROP TABLE users_v1;
-- v1 had no passwords and no login, so folding v1 users of the same email (the operator used one
-- address for several tenants) into one person grants nothing until the operator sets a password.

-- Who may act on the tenant itself (create workspaces, read the whole audit trail): a tenant
-- role, separate from the per-workspace roles in `members`.
CREATE TABLE tenant_owners (
    tenant_id  TEXT NOT NULL REFERENCES tenants(id),
    user_id    TEXT NOT NULL REFERENCES users(id),
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
);
INSERT OR IGNORE INTO tenant_owners (tenant_id, user_id, created_at)
    SELECT m.tenant_id, m.user_id, m.created_at FROM members m WHERE m.role = 'owner';

-- Who made a key (its user), a display prefix, an optional expiry.
ALTER TABLE api_keys ADD COLUMN created_by TEXT;
ALTER TABLE api_keys ADD COLUMN prefix TEXT NOT NULL DEFAULT '';
ALTER TABLE api_keys ADD COLUMN expires_at INTEGER;
UPDATE api_keys SET created_by = (
    SELECT m.user_id FROM members m WHERE m.tenant_id = api_keys.tenant_id AND m.workspace_id = api_keys.workspace_id AND m.role = 'owner' LIMIT 1);

CREATE TABLE sessions (
    secret_hash  TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users(id),
    csrf_token   TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
);
CREATE INDEX sessions_by_user ON sessions (user_id);

-- Plan limits (NULL = unlimited) and the fair-share weight.
ALTER TABLE tenants ADD COLUMN max_runs_per_month INTEGER;
ALTER TABLE tenants ADD COLUMN max_active_flows INTEGER;
ALTER TABLE tenants ADD COLUMN max_concurrent_runs INTEGER;
ALTER TABLE tenants ADD COLUMN max_webhook_rps INTEGER;
ALTER TABLE tenants ADD COLUMN max_stored_bytes INTEGER;
ALTER TABLE tenants ADD COLUMN weight INTEGER NOT NULL DEFAULT 1;
-- Head of the tenant's audit chain: a deleted last entry is detectable too.
ALTER TABLE tenants ADD COLUMN audit_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tenants ADD COLUMN audit_head TEXT NOT NULL DEFAULT '';

CREATE TABLE tenant_usage (
    tenant_id     TEXT PRIMARY KEY,
    month         TEXT NOT NULL,
    runs_in_month INTEGER NOT NULL,
    stored_bytes  INTEGER NOT NULL
);
INSERT INTO tenant_usage (tenant_id, month, runs_in_month, stored_bytes)
    SELECT t.id, '', 0, COALESCE((SELECT SUM(LENGTH(trigger) + COALESCE(LENGTH(output), 0)) FROM runs r WHERE r.tenant_id = t.id), 0)
    FROM tenants t;

-- Append-only, hash-chained per tenant.
CREATE TABLE audit_log (
    tenant_id    TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    ts           INTEGER NOT NULL,
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

-- Fair claiming walks ready work tenant by tenant.
DROP INDEX runs_ready;
CREATE INDEX runs_ready ON runs (tenant_id, not_before, id) WHERE status = 'queued';
CREATE INDEX runs_running ON runs (tenant_id) WHERE status = 'running';
