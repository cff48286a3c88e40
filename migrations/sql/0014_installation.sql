-- The installation's identity: one row, made by this migration. Its namespace on NATS (stream,
-- subjects) derives from it, so two installations on one NATS server never share events.
-- A database that already has events keeps the stream every installation used before
-- namespaces ('events': VBIN_EVENTS, vbin.events.>), so its stream keeps working.

CREATE TABLE installation (
    singleton      boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    id             uuid        NOT NULL,
    nats_namespace text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

INSERT INTO installation (id, nats_namespace)
SELECT g.id,
       CASE WHEN EXISTS (SELECT 1 FROM events) THEN 'events'
            ELSE substr(replace(g.id::text, '-', ''), 1, 12) END
FROM (SELECT gen_random_uuid() AS id) g;
