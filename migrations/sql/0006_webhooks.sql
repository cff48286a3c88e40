-- Webhook delivery: one row per (customer, event) written before the first attempt, so a
-- delivery survives restarts; every attempt is recorded.

CREATE TABLE webhook_deliveries (
    id              uuid        PRIMARY KEY,          -- UUIDv7: creation order
    customer_id     uuid        NOT NULL,
    event_id        uuid        NOT NULL,
    event_type      text        NOT NULL,
    -- Deliveries of one resource (type and id) go out in order: the next waits for the
    -- previous.
    resource_type   text        NOT NULL,
    resource_id     uuid        NOT NULL,
    uri             text        NOT NULL,
    method          text        NOT NULL,
    body            bytea       NOT NULL,             -- the exact bytes of every attempt
    status          text        NOT NULL DEFAULT 'pending', -- pending | delivered | failed
    attempts        int         NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_status_code int,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (customer_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_resource ON webhook_deliveries (customer_id, resource_id, resource_type, id)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_customer ON webhook_deliveries (customer_id, id);

CREATE TABLE webhook_attempts (
    delivery_id uuid        NOT NULL REFERENCES webhook_deliveries (id),
    attempt     int         NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    status_code int,
    latency_ms  int         NOT NULL,
    error       text,
    PRIMARY KEY (delivery_id, attempt)
);

-- Since when each customer's endpoint has failed without a success in between (auto-disable).
CREATE TABLE webhook_endpoints (
    customer_id   uuid        PRIMARY KEY,
    uri           text        NOT NULL,
    failing_since timestamptz
);
