-- Workspace-wide log search reads newest first by seq within a workspace.
CREATE INDEX run_logs_by_workspace ON run_logs (tenant_id, workspace_id, seq);
