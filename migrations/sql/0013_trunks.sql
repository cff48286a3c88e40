-- SIP trunks: a customer's carriers (their password only sealed, in the events).

CREATE TABLE rm_trunks (
    id           uuid   PRIMARY KEY,
    customer_id  uuid   NOT NULL,
    aggregate_id uuid   NOT NULL,
    body         jsonb  NOT NULL,
    version      bigint NOT NULL
);
CREATE INDEX rm_trunks_customer ON rm_trunks (customer_id, id);
CREATE TABLE pp_trunks (aggregate_id uuid PRIMARY KEY, sequence bigint NOT NULL);
