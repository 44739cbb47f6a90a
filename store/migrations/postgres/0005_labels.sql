-- The caller's labels of an execution (`stigmer run --label K=V`, the public input's `labels`):
-- a JSON object of strings, kept with its audit records. NULL when it has none.
ALTER TABLE executions ADD COLUMN labels TEXT;
