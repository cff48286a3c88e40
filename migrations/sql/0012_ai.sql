-- AI voice agents: assistants (`ai`), their conversations on calls (`aicall`) and the
-- conversations' messages (`aimessage`).

-- Written in the transaction of `aicall_created` (inline) and deleted in the one of
-- `aicall_status_terminated`: the conversations under way, counted per customer for the
-- concurrency limit and found by a call's hangup even when the read models lag behind.
CREATE TABLE aicall_live (
    aicall_id   uuid PRIMARY KEY,
    customer_id uuid NOT NULL,
    call_id     uuid NOT NULL
);
CREATE INDEX aicall_live_customer ON aicall_live (customer_id);
CREATE INDEX aicall_live_call ON aicall_live (call_id);

CREATE TABLE rm_ais (
    id           uuid   PRIMARY KEY,
    customer_id  uuid   NOT NULL,
    aggregate_id uuid   NOT NULL,
    body         jsonb  NOT NULL,
    version      bigint NOT NULL
);
CREATE INDEX rm_ais_customer ON rm_ais (customer_id, id);
CREATE TABLE pp_ais (aggregate_id uuid PRIMARY KEY, sequence bigint NOT NULL);

CREATE TABLE rm_aicalls (
    id           uuid   PRIMARY KEY,
    customer_id  uuid   NOT NULL,
    aggregate_id uuid   NOT NULL,
    body         jsonb  NOT NULL,
    version      bigint NOT NULL,
    reference_id uuid GENERATED ALWAYS AS ((body->>'reference_id')::uuid) STORED
);
CREATE INDEX rm_aicalls_customer ON rm_aicalls (customer_id, id);
CREATE INDEX rm_aicalls_reference ON rm_aicalls (customer_id, reference_id, id);

-- Message ids are time-ordered (UUIDv7): a conversation's messages in id order.
CREATE TABLE rm_aimessages (
    id           uuid   PRIMARY KEY,
    customer_id  uuid   NOT NULL,
    aggregate_id uuid   NOT NULL,
    body         jsonb  NOT NULL,
    version      bigint NOT NULL,
    aicall_id    uuid GENERATED ALWAYS AS ((body->>'aicall_id')::uuid) STORED
);
CREATE INDEX rm_aimessages_customer ON rm_aimessages (customer_id, id);
CREATE INDEX rm_aimessages_aicall ON rm_aimessages (customer_id, aicall_id, id);
CREATE TABLE pp_aicalls (aggregate_id uuid PRIMARY KEY, sequence bigint NOT NULL);
