-- OAuth2: authorization requests waiting for their callback (single use, short-lived; the
-- state is stored hashed), and a lease so one process at a time refreshes a credential.
CREATE TABLE oauth_states (
    state_hash    TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL,
    workspace_id  TEXT NOT NULL,
    credential_id TEXT NOT NULL,
    verifier      TEXT NOT NULL,
    redirect_uri  TEXT NOT NULL,
    expires_at    BIGINT NOT NULL
);
ALTER TABLE credentials ADD COLUMN refreshing_until BIGINT;

ALTER TABLE oauth_states ENABLE ROW LEVEL SECURITY;
ALTER TABLE oauth_states FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON oauth_states
    USING (tenant_id = current_setting('weft.tenant_id', true) OR current_setting('weft.system', true) = 'on')
    WITH CHECK (tenant_id = current_setting('weft.tenant_id', true) OR current_setting('weft.system', true) = 'on');
