-- Conferences: the read models of conferences (with their members' call ids) and of their
-- memberships (one row per call that joined, with when it left).
CREATE TABLE rm_conferences (
    id           uuid   PRIMARY KEY,
    customer_id  uuid   NOT NULL,
    aggregate_id uuid   NOT NULL,
    body         jsonb  NOT NULL,
    version      bigint NOT NULL
);
CREATE INDEX rm_conferences_customer ON rm_conferences (customer_id, id);
CREATE TABLE rm_conferencecalls (
    id            uuid   PRIMARY KEY,
    customer_id   uuid   NOT NULL,
    aggregate_id  uuid   NOT NULL,
    body          jsonb  NOT NULL,
    version       bigint NOT NULL,
    conference_id uuid GENERATED ALWAYS AS ((body->>'conference_id')::uuid) STORED
);
CREATE INDEX rm_conferencecalls_customer ON rm_conferencecalls (customer_id, id);
CREATE INDEX rm_conferencecalls_conference ON rm_conferencecalls (customer_id, conference_id, id);
CREATE TABLE pp_conferences (aggregate_id uuid PRIMARY KEY, sequence bigint NOT NULL);
