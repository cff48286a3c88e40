-- Call control: flows and activeflows (read models), and who owns each live call's media
-- session.

CREATE TABLE rm_flows (
    id           uuid   PRIMARY KEY,
    customer_id  uuid   NOT NULL,
    aggregate_id uuid   NOT NULL,
    body         jsonb  NOT NULL,
    version      bigint NOT NULL
);
CREATE INDEX rm_flows_customer ON rm_flows (customer_id, id);
CREATE TABLE pp_flows (aggregate_id uuid PRIMARY KEY, sequence bigint NOT NULL);

CREATE TABLE rm_activeflows (
    id           uuid   PRIMARY KEY,
    customer_id  uuid   NOT NULL,
    aggregate_id uuid   NOT NULL,
    body         jsonb  NOT NULL,
    version      bigint NOT NULL,
    reference_id uuid GENERATED ALWAYS AS ((body->>'reference_id')::uuid) STORED,
    status       text GENERATED ALWAYS AS (body->>'status') STORED
);
CREATE INDEX rm_activeflows_customer ON rm_activeflows (customer_id, id);
CREATE INDEX rm_activeflows_reference ON rm_activeflows (customer_id, reference_id, id);
CREATE TABLE pp_activeflows (aggregate_id uuid PRIMARY KEY, sequence bigint NOT NULL);

-- One row per live call with media: the media process that owns its session renews
-- `lease_until`; a session whose owner stopped renewing is taken over (its pending action is
-- carried out again) or, past the orphan timeout, its call is hung up. Deleted when the call
-- ends.
CREATE TABLE media_sessions (
    call_id      uuid        PRIMARY KEY,
    customer_id  uuid        NOT NULL,
    owner        text        NOT NULL,
    lease_until  timestamptz NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX media_sessions_lease ON media_sessions (lease_until);

-- Recordings of calls (their files are objects in the recordings store).
CREATE TABLE rm_recordings (
    id           uuid   PRIMARY KEY,
    customer_id  uuid   NOT NULL,
    aggregate_id uuid   NOT NULL,
    body         jsonb  NOT NULL,
    version      bigint NOT NULL,
    reference_id uuid GENERATED ALWAYS AS ((body->>'reference_id')::uuid) STORED,
    status       text GENERATED ALWAYS AS (body->>'status') STORED
);
CREATE INDEX rm_recordings_customer ON rm_recordings (customer_id, id);
CREATE INDEX rm_recordings_reference ON rm_recordings (customer_id, reference_id, id);
CREATE TABLE pp_recordings (aggregate_id uuid PRIMARY KEY, sequence bigint NOT NULL);

-- Written with `recording_ended` (inline): where each stored recording's file is, for the
-- download endpoint and the retention sweep; deleted with `recording_deleted`.
CREATE TABLE recording_files (
    recording_id uuid        PRIMARY KEY,
    customer_id  uuid        NOT NULL,
    file         text        NOT NULL,
    ended_at     timestamptz NOT NULL
);
CREATE INDEX recording_files_ended ON recording_files (ended_at);

-- Numbers: the lookup of who owns each phone number and its flow (inline, exact at commit;
-- its primary key makes a number one customer's only), and the read model.
CREATE TABLE numbers (
    number       text PRIMARY KEY,
    number_id    uuid NOT NULL UNIQUE,
    customer_id  uuid NOT NULL,
    call_flow_id uuid NOT NULL
);
CREATE TABLE rm_numbers (
    id           uuid   PRIMARY KEY,
    customer_id  uuid   NOT NULL,
    aggregate_id uuid   NOT NULL,
    body         jsonb  NOT NULL,
    version      bigint NOT NULL
);
CREATE INDEX rm_numbers_customer ON rm_numbers (customer_id, id);
CREATE TABLE pp_numbers (aggregate_id uuid PRIMARY KEY, sequence bigint NOT NULL);
