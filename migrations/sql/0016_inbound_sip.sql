-- Incoming SIP calls: a number may be reached through one of its customer's trunks (its calls
-- are taken only from that trunk's address); the SIP carrier's claim rows remember the far
-- end's Call-ID of the calls it received.

ALTER TABLE numbers ADD COLUMN trunk_id uuid;
ALTER TABLE sip_calls ADD COLUMN direction text NOT NULL DEFAULT 'outgoing';
ALTER TABLE sip_calls ADD COLUMN sip_call_id text;
