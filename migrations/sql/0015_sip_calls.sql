-- The SIP carrier's claim on a call: written before its INVITE, so a redelivered call_created
-- finds it and sends nothing; its state and the process that holds the dialog let a restart
-- end what died with a process.

CREATE TABLE sip_calls (
    call_id     uuid        PRIMARY KEY,
    customer_id uuid        NOT NULL,
    trunk_id    uuid,
    state       text        NOT NULL,  -- inviting | answered | ended
    node        text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sip_calls_live ON sip_calls (node) WHERE state <> 'ended';
