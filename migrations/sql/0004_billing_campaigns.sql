-- Billing and outbound campaigns: the process managers' once-keys and the read models.

-- Commands a process manager sent with a once-key (e.g. "billing:<call id>"): the key is
-- inserted in the same transaction as the command's events, so redelivered triggers cannot
-- apply a command twice. Kept for good: a durable consumer may be replayed from the start of
-- the stream (7 days) at any time.
CREATE TABLE processed_commands (
    key         text        PRIMARY KEY,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE rm_billing_accounts (
    id           uuid   PRIMARY KEY,
    customer_id  uuid   NOT NULL,
    aggregate_id uuid   NOT NULL,
    body         jsonb  NOT NULL,
    version      bigint NOT NULL
);
CREATE TABLE rm_billings (
    id           uuid   PRIMARY KEY,
    customer_id  uuid   NOT NULL,
    aggregate_id uuid   NOT NULL,
    body         jsonb  NOT NULL,
    version      bigint NOT NULL,
    reference_id uuid GENERATED ALWAYS AS ((body->>'reference_id')::uuid) STORED
);
CREATE INDEX rm_billings_customer ON rm_billings (customer_id, id);
CREATE INDEX rm_billings_reference ON rm_billings (customer_id, reference_id, id);
CREATE TABLE pp_billing (aggregate_id uuid PRIMARY KEY, sequence bigint NOT NULL);

CREATE TABLE rm_outplans (
    id           uuid   PRIMARY KEY,
    customer_id  uuid   NOT NULL,
    aggregate_id uuid   NOT NULL,
    body         jsonb  NOT NULL,
    version      bigint NOT NULL
);
CREATE INDEX rm_outplans_customer ON rm_outplans (customer_id, id);
CREATE TABLE pp_outplans (aggregate_id uuid PRIMARY KEY, sequence bigint NOT NULL);

CREATE TABLE rm_outdials (
    id           uuid   PRIMARY KEY,
    customer_id  uuid   NOT NULL,
    aggregate_id uuid   NOT NULL,
    body         jsonb  NOT NULL,
    version      bigint NOT NULL
);
CREATE INDEX rm_outdials_customer ON rm_outdials (customer_id, id);
CREATE TABLE pp_outdials (aggregate_id uuid PRIMARY KEY, sequence bigint NOT NULL);

CREATE TABLE rm_outdialtargets (
    id           uuid   PRIMARY KEY,
    customer_id  uuid   NOT NULL,
    aggregate_id uuid   NOT NULL,
    body         jsonb  NOT NULL,
    version      bigint NOT NULL,
    outdial_id   uuid GENERATED ALWAYS AS ((body->>'outdial_id')::uuid) STORED,
    status       text GENERATED ALWAYS AS (body->>'status') STORED
);
CREATE INDEX rm_outdialtargets_outdial ON rm_outdialtargets (outdial_id, id);
-- The dialer's candidate scan: pending targets of an outdial.
CREATE INDEX rm_outdialtargets_open ON rm_outdialtargets (outdial_id, status, id)
    WHERE status <> 'completed';
CREATE TABLE pp_targets (aggregate_id uuid PRIMARY KEY, sequence bigint NOT NULL);

CREATE TABLE rm_campaigns (
    id           uuid   PRIMARY KEY,
    customer_id  uuid   NOT NULL,
    aggregate_id uuid   NOT NULL,
    body         jsonb  NOT NULL,
    version      bigint NOT NULL,
    status       text GENERATED ALWAYS AS (body->>'status') STORED
);
CREATE INDEX rm_campaigns_customer ON rm_campaigns (customer_id, id);
CREATE INDEX rm_campaigns_active ON rm_campaigns (status) WHERE status IN ('running', 'stopping');
CREATE TABLE rm_campaigncalls (
    id           uuid   PRIMARY KEY,
    customer_id  uuid   NOT NULL,
    aggregate_id uuid   NOT NULL,
    body         jsonb  NOT NULL,
    version      bigint NOT NULL,
    campaign_id  uuid GENERATED ALWAYS AS ((body->>'campaign_id')::uuid) STORED
);
CREATE INDEX rm_campaigncalls_customer ON rm_campaigncalls (customer_id, id);
CREATE INDEX rm_campaigncalls_campaign ON rm_campaigncalls (customer_id, campaign_id, id);
CREATE TABLE pp_campaigns (aggregate_id uuid PRIMARY KEY, sequence bigint NOT NULL);

-- Balances exact at commit (inline, like auth_agents): POST /v1.0/calls and the campaign
-- dialer refuse new calls when the balance cannot cover one minute.
CREATE TABLE billing_balances (
    customer_id            uuid   PRIMARY KEY,
    balance_micros         bigint NOT NULL,
    rate_micros_per_minute bigint NOT NULL
);
