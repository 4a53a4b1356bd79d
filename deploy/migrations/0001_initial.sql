-- calltime's first schema. Each service owns one schema; `core` holds firm configuration and
-- `directory` the billing-system directory that the matcher syncs and the drafts service reads.

CREATE SCHEMA core;
CREATE TABLE core.firms (
    firm_id                 text PRIMARY KEY,
    name                    text NOT NULL,
    billing_system          text NOT NULL DEFAULT 'clio',
    billing_base_url        text NOT NULL,
    -- the name of the firm's billing token in the secrets store, never the token itself
    billing_credential_ref  text NOT NULL,
    rounding_rule           text NOT NULL DEFAULT 'nearest' CHECK (rounding_rule IN ('nearest', 'up')),
    activity_code           text NOT NULL DEFAULT 'Telephone Conference',
    narrative_template      text NOT NULL DEFAULT 'Telephone conference re: {matter} — {minutes} min',
    currency                text NOT NULL DEFAULT 'USD',
    default_time_zone       text NOT NULL DEFAULT 'America/New_York',
    phone_region            text NOT NULL DEFAULT 'US',
    -- digest of the firm's API key (review list, directory sync), never the key itself
    api_key_sha256          bytea
);

CREATE SCHEMA ingest;
CREATE TABLE ingest.provider_accounts (
    firm_id                     text NOT NULL REFERENCES core.firms,
    provider                    text NOT NULL,
    account_id                  text NOT NULL,
    -- only a digest: ingest compares, it never needs the token itself
    verification_token_sha256   bytea NOT NULL,
    PRIMARY KEY (firm_id, provider)
);
CREATE TABLE ingest.phone_users (
    firm_id             text NOT NULL REFERENCES core.firms,
    provider            text NOT NULL,
    provider_user_id    text NOT NULL,
    attorney_user_id    text NOT NULL,
    internal_number     text,
    PRIMARY KEY (firm_id, provider, provider_user_id)
);
CREATE TABLE ingest.ringcentral_notifications (
    firm_id                 text NOT NULL,
    notification_uuid       text NOT NULL,
    telephony_session_id    text NOT NULL,
    sequence                integer NOT NULL,
    body                    bytea NOT NULL,
    received_at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (firm_id, notification_uuid)
);
CREATE INDEX ON ingest.ringcentral_notifications (firm_id, telephony_session_id);
CREATE TABLE ingest.calls (
    firm_id         text NOT NULL,
    call_id         text NOT NULL,
    revision        integer NOT NULL,
    -- what the last announced revision said; a late notification that changes it is a new revision
    fingerprint     text NOT NULL,
    received_at     timestamptz NOT NULL,
    PRIMARY KEY (firm_id, call_id)
);
CREATE TABLE ingest.outbox (
    id              bigserial PRIMARY KEY,
    topic           text NOT NULL,
    key             bytea NOT NULL,
    value           bytea NOT NULL,
    header_names    text[] NOT NULL,
    header_values   bytea[] NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    published_at    timestamptz
);
CREATE INDEX ON ingest.outbox (id) WHERE published_at IS NULL;

CREATE SCHEMA directory;
CREATE TABLE directory.users (
    firm_id         text NOT NULL,
    user_id         text NOT NULL,
    name            text NOT NULL,
    rate            numeric(12, 2) NOT NULL,
    time_zone       text,
    phone_e164      text,
    enabled         boolean NOT NULL,
    PRIMARY KEY (firm_id, user_id)
);
CREATE TABLE directory.contacts (
    firm_id         text NOT NULL,
    contact_id      text NOT NULL,
    name            text NOT NULL,
    is_client       boolean NOT NULL,
    PRIMARY KEY (firm_id, contact_id)
);
CREATE TABLE directory.contact_numbers (
    firm_id         text NOT NULL,
    e164            text NOT NULL,
    contact_id      text NOT NULL,
    raw             text NOT NULL,
    PRIMARY KEY (firm_id, e164, contact_id)
);
-- numbers that never make a billable draft: the firm's own lines, co-counsel, vendors
CREATE TABLE directory.non_client_numbers (
    firm_id         text NOT NULL,
    e164            text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('internal', 'co_counsel', 'vendor')),
    label           text NOT NULL,
    PRIMARY KEY (firm_id, e164)
);
CREATE TABLE directory.matters (
    firm_id         text NOT NULL,
    matter_id       text NOT NULL,
    client_id       text,
    display_number  text NOT NULL,
    description     text NOT NULL,
    status          text NOT NULL,
    PRIMARY KEY (firm_id, matter_id)
);
CREATE INDEX ON directory.matters (firm_id, client_id);
CREATE TABLE directory.sync_state (
    firm_id         text NOT NULL,
    resource        text NOT NULL,
    synced_at       timestamptz NOT NULL,
    PRIMARY KEY (firm_id, resource)
);

CREATE SCHEMA drafts;
CREATE TABLE drafts.drafts (
    firm_id             text NOT NULL,
    draft_id            uuid NOT NULL,
    call_id             text NOT NULL,
    revision            integer NOT NULL,
    state               text NOT NULL CHECK (state IN ('pending', 'approved')),
    attorney_user_id    text,
    match_outcome       text NOT NULL,
    client_id           text,
    client_name         text,
    matter              jsonb,
    candidates          jsonb NOT NULL,
    entry_date          date NOT NULL,
    time_zone           text NOT NULL,
    raw_seconds         integer NOT NULL,
    billed_hours        numeric(6, 1) NOT NULL,
    rate                numeric(12, 2) NOT NULL,
    amount              numeric(14, 2) NOT NULL,
    currency            text NOT NULL,
    activity_code       text NOT NULL,
    narrative           text NOT NULL,
    billable            boolean NOT NULL,
    review_state        text NOT NULL,
    flags               text[] NOT NULL,
    call_started_at     timestamptz NOT NULL,
    external_number     text,
    created_at          timestamptz NOT NULL,
    approved_at         timestamptz,
    approved_by         text,
    approved_matter_id  text,
    edited_fields       text[],
    PRIMARY KEY (firm_id, draft_id),
    UNIQUE (firm_id, call_id)
);
CREATE TABLE drafts.outbox (
    id              bigserial PRIMARY KEY,
    topic           text NOT NULL,
    key             bytea NOT NULL,
    value           bytea NOT NULL,
    header_names    text[] NOT NULL,
    header_values   bytea[] NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    published_at    timestamptz
);
CREATE INDEX ON drafts.outbox (id) WHERE published_at IS NULL;

CREATE SCHEMA writer;
CREATE TABLE writer.ledger (
    firm_id                     text NOT NULL,
    draft_id                    text NOT NULL,
    call_id                     text NOT NULL,
    billing_system              text NOT NULL,
    state                       text NOT NULL CHECK (state IN ('intent', 'written', 'dead')),
    -- set before each POST so that a restart knows a write may have landed and looks first
    communication_attempted     boolean NOT NULL DEFAULT false,
    communication_id            text,
    entry_attempted             boolean NOT NULL DEFAULT false,
    entry_id                    text,
    attempts                    integer NOT NULL DEFAULT 0,
    last_error                  text,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    written_at                  timestamptz,
    PRIMARY KEY (firm_id, draft_id)
);
