-- Providers that deliver out of order (RingCentral) get a short quiet period between the
-- notice that completes a call and its first announcement, so stragglers join revision 1.
CREATE TABLE ingest.settles (
    firm_id             text NOT NULL,
    provider            text NOT NULL,
    provider_call_id    text NOT NULL,
    due_at              timestamptz NOT NULL,
    PRIMARY KEY (firm_id, provider, provider_call_id)
);
CREATE INDEX ON ingest.settles (due_at);
