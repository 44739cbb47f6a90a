-- The OpenTelemetry trace of an execution: 32 hex characters, set when the execution was started
-- with OTLP tracing on (OTEL_EXPORTER_OTLP_ENDPOINT), so `executions show` leads to its trace.
ALTER TABLE executions ADD COLUMN trace_id TEXT;
