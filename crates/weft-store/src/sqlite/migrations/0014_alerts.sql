-- Alerting: a workspace's notification rules (spec: what they watch and where they notify, as
-- JSON the engine reads), one row per incident of a rule (its de-duplication state), and
-- an outbox of notifications to deliver (written in the transaction that decides to notify).
CREATE TABLE alert_rules (
    tenant_id    TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    name         TEXT NOT NULL,
    spec         TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, workspace_id, name)
);
CREATE TABLE alert_incidents (
    tenant_id    TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    rule         TEXT NOT NULL,
    incident     TEXT NOT NULL,
    first_at     INTEGER NOT NULL,
    last_at      INTEGER NOT NULL,
    notified_at  INTEGER NOT NULL,
    suppressed   INTEGER NOT NULL DEFAULT 0,
    -- For rules that need N occurrences within a window (error_spike): the window's start
    -- and its count so far.
    window_start INTEGER NOT NULL DEFAULT 0,
    window_count INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, workspace_id, rule, incident)
);
CREATE TABLE alert_outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id    TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    rule         TEXT NOT NULL,
    incident     TEXT NOT NULL,
    payload      TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    next_at      INTEGER NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    delivered_at INTEGER,
    error        TEXT
);
CREATE INDEX alert_outbox_due ON alert_outbox (next_at) WHERE delivered_at IS NULL;
CREATE INDEX alert_outbox_by_rule ON alert_outbox (tenant_id, workspace_id, rule, seq);
