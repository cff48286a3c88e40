-- Command-side lookup tables, written in the same transaction as the events that change them
-- (inline projections): they must be exact at once, so they cannot lag like read models.

-- Logins: usernames are unique platform-wide.
CREATE TABLE auth_agents (
    agent_id      uuid PRIMARY KEY,
    customer_id   uuid NOT NULL,
    username      text NOT NULL UNIQUE,
    password_hash text NOT NULL,
    permission    text NOT NULL
);

-- Access keys by token hash.
CREATE TABLE auth_access_keys (
    token_hash  text PRIMARY KEY,
    key_id      uuid NOT NULL UNIQUE,
    customer_id uuid NOT NULL,
    expire_at   timestamptz
);

-- Idempotency-Key replay store (24 h).
CREATE TABLE idempotency_keys (
    scope        text        NOT NULL,
    key          text        NOT NULL,
    request_hash bytea       NOT NULL,
    status_code  int,
    response     bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- Platform secrets generated on first start and shared by every process.
CREATE TABLE platform_secrets (
    name  text PRIMARY KEY,
    value text NOT NULL
);

-- The sandbox carrier's durable timers: what the simulated network does next, and when.
CREATE TABLE carrier_timers (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    call_id     uuid        NOT NULL,
    customer_id uuid        NOT NULL,
    action      text        NOT NULL,
    due_at      timestamptz NOT NULL,
    UNIQUE (call_id, action)
);
CREATE INDEX carrier_timers_due ON carrier_timers (due_at);
