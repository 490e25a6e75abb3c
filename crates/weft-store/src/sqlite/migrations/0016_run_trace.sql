-- A run's W3C trace context (traceparent): the intake span that accepted it, so the run's
-- spans, wherever it executes, join the trace of the request that started it.
ALTER TABLE runs ADD COLUMN traceparent TEXT;
