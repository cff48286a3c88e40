-- GET /v1.0/calls?status=: a customer's calls of one status, newest first, without reading the
-- others.
CREATE INDEX rm_calls_customer_status ON rm_calls (customer_id, (body->>'status'), id);
