-- Housekeeping (vbin/src/housekeeping.rs) deletes what has outlived its purpose; these indexes
-- keep its periodic scans from reading whole tables.

-- Once-keys of requests with an Idempotency-Key (`request:<seed>:...`) matter only while the
-- key's record lives (24 h); process managers' once-keys (`billing:<call id>`) are kept.
CREATE INDEX processed_commands_request ON processed_commands (recorded_at)
    WHERE key LIKE 'request:%';

-- Ended webhook deliveries by age, for the retention period.
CREATE INDEX webhook_deliveries_ended ON webhook_deliveries (updated_at)
    WHERE status <> 'pending';
