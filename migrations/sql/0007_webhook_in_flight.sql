-- A delivery being sent (claimed, its attempt not yet recorded). Deliveries queued behind one
-- in flight are put off only briefly (it normally ends in milliseconds); behind one waiting
-- for a retry, until that retry.
ALTER TABLE webhook_deliveries ADD COLUMN in_flight boolean NOT NULL DEFAULT false;
