-- Queues: which queue a call joined (exact at commit, for the queue process manager's hangup
-- handling) and the read models of queues (with statistics) and queue calls.

-- Written in the transaction of `queuecall_joined` (inline): a call joins at most one queue
-- (the join's once-key is per call), and its hangup must find that queue even when the
-- read models lag behind.
CREATE TABLE queue_calls (
    call_id     uuid PRIMARY KEY,
    queue_id    uuid NOT NULL,
    customer_id uuid NOT NULL
);

CREATE TABLE rm_queues (
    id           uuid   PRIMARY KEY,
    customer_id  uuid   NOT NULL,
    aggregate_id uuid   NOT NULL,
    body         jsonb  NOT NULL,
    version      bigint NOT NULL
);
CREATE INDEX rm_queues_customer ON rm_queues (customer_id, id);
CREATE TABLE rm_queuecalls (
    id           uuid   PRIMARY KEY,
    customer_id  uuid   NOT NULL,
    aggregate_id uuid   NOT NULL,
    body         jsonb  NOT NULL,
    version      bigint NOT NULL,
    queue_id     uuid GENERATED ALWAYS AS ((body->>'queue_id')::uuid) STORED,
    status       text GENERATED ALWAYS AS (body->>'status') STORED
);
CREATE INDEX rm_queuecalls_customer ON rm_queuecalls (customer_id, id);
CREATE INDEX rm_queuecalls_queue ON rm_queuecalls (customer_id, queue_id, id);
-- The dispatcher's scan: calls waiting, oldest first (ids are UUIDv7).
CREATE INDEX rm_queuecalls_waiting ON rm_queuecalls (id) WHERE status = 'waiting';
CREATE TABLE pp_queues (aggregate_id uuid PRIMARY KEY, sequence bigint NOT NULL);
