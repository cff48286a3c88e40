-- The SIP carrier's live calls are leased by the process holding their dialogs (renewed every
-- few seconds); a call whose lease ran out died with its process: any carrier process ends it
-- (network_out_of_order) and, when its confirmed dialog was saved, sends the far end a BYE.

ALTER TABLE sip_calls ADD COLUMN lease_until timestamptz NOT NULL DEFAULT now() + interval '20 seconds';
ALTER TABLE sip_calls ADD COLUMN dialog jsonb;
CREATE INDEX sip_calls_lease ON sip_calls (lease_until) WHERE state <> 'ended';
