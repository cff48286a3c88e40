-- A request with an Idempotency-Key that was cut off (its process died) after committing some
-- of its commands is executed again by the client's retry. The seed makes that re-execution
-- create the same ids, and each command carries the once-key `request:<seed>:<type>:<id>`, so
-- what the first attempt committed is not committed twice.
ALTER TABLE idempotency_keys ADD COLUMN id_seed uuid;
