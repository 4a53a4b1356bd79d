-- Issue 3 and 4: every phone provider through one inbox; firms' credentials sealed at rest.

-- AES-GCM sealed JSON (calltime.credentials); the key never touches the database.
CREATE TABLE core.credentials (
    firm_id     text NOT NULL REFERENCES core.firms,
    name        text NOT NULL,
    sealed      bytea NOT NULL,
    version     integer NOT NULL DEFAULT 1,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (firm_id, name)
);

-- A provider account's secrets now live in core.credentials under '<provider>.webhook' and
-- '<provider>.api'; the RingCentral-only digest column goes.
ALTER TABLE ingest.provider_accounts DROP COLUMN verification_token_sha256;
ALTER TABLE ingest.provider_accounts ADD COLUMN api_base_url text;
ALTER TABLE ingest.provider_accounts ADD COLUMN reconcile boolean NOT NULL DEFAULT true;

-- Every provider's notices, once each (dedupe_key is the provider's delivery identity).
CREATE TABLE ingest.notices (
    firm_id             text NOT NULL,
    provider            text NOT NULL,
    dedupe_key          text NOT NULL,
    provider_call_id    text NOT NULL,
    body                bytea NOT NULL,
    received_at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (firm_id, provider, dedupe_key)
);
CREATE INDEX ON ingest.notices (firm_id, provider, provider_call_id, received_at);
INSERT INTO ingest.notices (firm_id, provider, dedupe_key, provider_call_id, body, received_at)
    SELECT firm_id, 'ringcentral', notification_uuid, telephony_session_id, body, received_at
    FROM ingest.ringcentral_notifications;
DROP TABLE ingest.ringcentral_notifications;

-- Records to fetch before a call can be announced (Graph sends only an id).
CREATE TABLE ingest.record_fetches (
    firm_id             text NOT NULL,
    provider            text NOT NULL,
    record_id           text NOT NULL,
    due_at              timestamptz NOT NULL DEFAULT now(),
    attempts            integer NOT NULL DEFAULT 0,
    last_error          text,
    PRIMARY KEY (firm_id, provider, record_id)
);
CREATE INDEX ON ingest.record_fetches (due_at);

-- Webhook subscriptions we hold at providers, so the renewal job knows what expires when.
CREATE TABLE ingest.subscriptions (
    firm_id             text NOT NULL,
    provider            text NOT NULL,
    subscription_id     text NOT NULL,
    expires_at          timestamptz,
    renewed_at          timestamptz,
    PRIMARY KEY (firm_id, provider, subscription_id)
);

-- One row per reconciliation sweep: what it read and what it had to publish.
CREATE TABLE ingest.reconciliations (
    id                  bigserial PRIMARY KEY,
    firm_id             text NOT NULL,
    provider            text NOT NULL,
    window_start        timestamptz NOT NULL,
    window_end          timestamptz NOT NULL,
    started_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz,
    calls_seen          integer NOT NULL DEFAULT 0,
    calls_published     integer NOT NULL DEFAULT 0,
    error               text
);
