-- Read side: projection bookkeeping, read-model tables, cache invalidation intents, and the
-- command side's webhook secret lookup (inline, like auth_agents).

-- One row per projection: how far it got (informational and for lag; JetStream keeps the
-- delivery state, pp_* tables the exactly-once state).
CREATE TABLE projection_checkpoints (
    name            text        PRIMARY KEY,
    stream_seq      bigint      NOT NULL DEFAULT 0,
    global_position bigint      NOT NULL DEFAULT 0,
    events_applied  bigint      NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Events a projection could not apply, with the error (parked, acked, visible to operators).
CREATE TABLE projection_dead_letters (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    projection      text        NOT NULL,
    event_id        uuid,
    event_type      text,
    aggregate_id    uuid,
    sequence        bigint,
    global_position bigint,
    subject         text,
    deliveries      bigint      NOT NULL,
    error           text        NOT NULL,
    payload         text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX projection_dead_letters_projection ON projection_dead_letters (projection, id);

-- Redis keys to tombstone after a projection commit, written in that commit: a crash or a Redis
-- outage between commit and Redis leaves the intent here for the sweeper.
CREATE TABLE cache_invalidations (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key        text        NOT NULL,
    version    bigint      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Read models. Every table has the same writable shape (id, customer_id, aggregate_id = the
-- aggregate whose events wrote the row, body = the API view, version = number of events applied
-- to the row), so the projection runtime and replay are generic; filter columns, when needed,
-- are generated from body. pp_<projection>: the last aggregate sequence
-- applied, per aggregate, written in the same transaction as the rows.
CREATE TABLE rm_calls (
    id          uuid   PRIMARY KEY,
    customer_id uuid   NOT NULL,
    aggregate_id uuid  NOT NULL,
    body        jsonb  NOT NULL,
    version     bigint NOT NULL
);
CREATE INDEX rm_calls_customer ON rm_calls (customer_id, id);
CREATE TABLE pp_calls (aggregate_id uuid PRIMARY KEY, sequence bigint NOT NULL);

CREATE TABLE rm_customers (
    id          uuid   PRIMARY KEY,
    customer_id uuid   NOT NULL,
    aggregate_id uuid  NOT NULL,
    body        jsonb  NOT NULL,
    version     bigint NOT NULL
);
CREATE TABLE rm_agents (
    id          uuid   PRIMARY KEY,
    customer_id uuid   NOT NULL,
    aggregate_id uuid  NOT NULL,
    body        jsonb  NOT NULL,
    version     bigint NOT NULL
);
CREATE INDEX rm_agents_customer ON rm_agents (customer_id, id);
CREATE TABLE rm_accesskeys (
    id          uuid   PRIMARY KEY,
    customer_id uuid   NOT NULL,
    aggregate_id uuid  NOT NULL,
    body        jsonb  NOT NULL,
    version     bigint NOT NULL
);
CREATE INDEX rm_accesskeys_customer ON rm_accesskeys (customer_id, id);
CREATE TABLE pp_customers (aggregate_id uuid PRIMARY KEY, sequence bigint NOT NULL);

-- Webhook secrets, exact at commit (GET /v1.0/customer shows it; webhook delivery signs with it).
CREATE TABLE webhook_secrets (
    customer_id          uuid PRIMARY KEY,
    secret               text NOT NULL,
    previous_secret      text,
    previous_valid_until timestamptz
);
INSERT INTO webhook_secrets (customer_id, secret)
SELECT customer_id, payload->>'webhook_secret' FROM events WHERE event_type = 'customer_created'
ON CONFLICT DO NOTHING;
UPDATE webhook_secrets w SET secret = r.payload->>'webhook_secret',
       previous_secret = r.payload->>'previous_secret',
       previous_valid_until = (r.payload->>'previous_valid_until')::timestamptz
  FROM (SELECT DISTINCT ON (customer_id) customer_id, payload FROM events
         WHERE event_type = 'webhook_secret_rotated' ORDER BY customer_id, sequence DESC) r
 WHERE w.customer_id = r.customer_id;
