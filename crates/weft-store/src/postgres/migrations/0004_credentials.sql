-- Credentials, sealed by the vault: the store never sees a plaintext value. `fields` lists the
-- field names (a JSON array) so listings need no decryption.
CREATE TABLE credentials (
    tenant_id     TEXT NOT NULL,
    workspace_id  TEXT NOT NULL,
    id            TEXT NOT NULL,
    name          TEXT NOT NULL,
    connector     TEXT NOT NULL,
    fields        TEXT NOT NULL,
    key_id        TEXT NOT NULL,
    wrapped_key   BYTEA NOT NULL,
    ciphertext    BYTEA NOT NULL,
    status        TEXT NOT NULL DEFAULT 'ok',
    status_reason TEXT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, workspace_id, id),
    UNIQUE (tenant_id, workspace_id, name),
    FOREIGN KEY (tenant_id, workspace_id) REFERENCES workspaces(tenant_id, id)
);
-- Rotation walks credentials by the key that wraps them.
CREATE INDEX credentials_key ON credentials (key_id);

ALTER TABLE credentials ENABLE ROW LEVEL SECURITY;
ALTER TABLE credentials FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON credentials
    USING (tenant_id = current_setting('weft.tenant_id', true) OR current_setting('weft.system', true) = 'on')
    WITH CHECK (tenant_id = current_setting('weft.tenant_id', true) OR current_setting('weft.system', true) = 'on');
