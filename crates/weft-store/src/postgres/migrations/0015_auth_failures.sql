-- A credential's consecutive authentication failures (401s); at a threshold it is paused
-- (needs_reauth) with the reason, and a success or new values set it back to 0.
ALTER TABLE credentials ADD COLUMN auth_failures BIGINT NOT NULL DEFAULT 0;
