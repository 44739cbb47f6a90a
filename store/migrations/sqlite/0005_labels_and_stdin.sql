-- The caller's labels of an execution (`stigmer run --label K=V`, the public input's `labels`):
-- a JSON object of strings, kept with its audit records. NULL when it has none.
ALTER TABLE executions ADD COLUMN labels TEXT;
-- What the command was given on its standard input: size and sha256 (hex), NULL when nothing
-- was forwarded. The bytes themselves are never stored.
ALTER TABLE executions ADD COLUMN stdin_bytes BIGINT;
ALTER TABLE executions ADD COLUMN stdin_sha256 TEXT;
