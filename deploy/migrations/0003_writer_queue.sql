-- Issue 4: the ledger doubles as each firm's write queue, so one firm's backlog (paced at its
-- token's allowance) never holds up another firm's approvals on the same partition.
ALTER TABLE writer.ledger ADD COLUMN approval bytea;            -- the draft.approved value (Avro)
ALTER TABLE writer.ledger ADD COLUMN approval_headers text[];   -- its headers, name=value (schema version)
ALTER TABLE writer.ledger ADD COLUMN next_attempt_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE writer.ledger ADD COLUMN dead_at timestamptz;
CREATE INDEX ON writer.ledger (firm_id, next_attempt_at) WHERE state = 'intent';

-- Where the firm's billing OAuth tokens are refreshed (NULL: a static token from the secrets store).
ALTER TABLE core.firms ADD COLUMN billing_token_url text;
ALTER TABLE core.firms ADD COLUMN billing_client_auth text NOT NULL DEFAULT 'body'
    CHECK (billing_client_auth IN ('body', 'basic'));
