-- The webhook sender claims due deliveries customer by customer (skipping the customers whose
-- allowance is in flight without reading their backlog), so the claim costs the same with a
-- backlog of 10k or 100k: each customer's due deliveries in (next_attempt_at, id) order, from
-- this index, ties broken by id (0020 had no id; see webhooks/src/delivery.rs `claim`).
CREATE INDEX IF NOT EXISTS webhook_deliveries_customer_due
    ON webhook_deliveries (customer_id, next_attempt_at, id) WHERE status = 'pending';
DROP INDEX IF EXISTS webhook_deliveries_due;
