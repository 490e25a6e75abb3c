-- Typed run events: what each log line records (RunStarted, StepRetrying, …; Log for a plain line).
ALTER TABLE run_logs ADD COLUMN event TEXT NOT NULL DEFAULT 'Log';
