-- 0020's claim customer by customer was reverted (it delivered a 10k backlog at ~100/s while
-- 40k and 100k went at 3.3-3.6k/s, cause not found yet): the claim reads the due deliveries
-- in order from this index again.
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
DROP INDEX IF EXISTS webhook_deliveries_customer_due;
