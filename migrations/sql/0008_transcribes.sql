-- Transcription: the running transcriptions of each call (exact at commit, for the hangup
-- process manager and the media pipeline) and the read models of transcriptions and their
-- transcripts.

-- Written in the transaction of `transcribe_started` (inline) and deleted in the one of
-- `transcribe_completed`: the running transcriptions of a call, found by a hangup even when
-- the read models lag behind. At most one per call and direction.
CREATE TABLE transcribe_calls (
    transcribe_id uuid PRIMARY KEY,
    call_id       uuid NOT NULL,
    customer_id   uuid NOT NULL,
    direction     text NOT NULL,
    language      text NOT NULL,
    CONSTRAINT transcribe_calls_call_direction_key UNIQUE (call_id, direction)
);

CREATE TABLE rm_transcribes (
    id           uuid   PRIMARY KEY,
    customer_id  uuid   NOT NULL,
    aggregate_id uuid   NOT NULL,
    body         jsonb  NOT NULL,
    version      bigint NOT NULL,
    reference_id uuid GENERATED ALWAYS AS ((body->>'reference_id')::uuid) STORED,
    status       text GENERATED ALWAYS AS (body->>'status') STORED
);
CREATE INDEX rm_transcribes_customer ON rm_transcribes (customer_id, id);
CREATE INDEX rm_transcribes_reference ON rm_transcribes (customer_id, reference_id, id);
-- The running transcriptions of a call.
CREATE INDEX rm_transcribes_running ON rm_transcribes (reference_id) WHERE status = 'running';
CREATE TABLE rm_transcripts (
    id            uuid   PRIMARY KEY,
    customer_id   uuid   NOT NULL,
    aggregate_id  uuid   NOT NULL,
    body          jsonb  NOT NULL,
    version       bigint NOT NULL,
    transcribe_id uuid   GENERATED ALWAYS AS ((body->>'transcribe_id')::uuid) STORED,
    tm_transcript bigint GENERATED ALWAYS AS ((body->>'tm_transcript')::bigint) STORED
);
CREATE INDEX rm_transcripts_customer ON rm_transcripts (customer_id, id);
-- A transcription's transcripts in the order they were spoken.
CREATE INDEX rm_transcripts_transcribe ON rm_transcripts (customer_id, transcribe_id, tm_transcript, id);
CREATE TABLE pp_transcribes (aggregate_id uuid PRIMARY KEY, sequence bigint NOT NULL);
