-- Issue 4: Clio's webhooks keep the directory fresh. A record the billing system reports deleted
-- is removed and remembered here, because an incremental sync cannot see deletions and one that
-- read the record just before it was deleted must not write it back.
CREATE TABLE directory.deletions (
    firm_id         text NOT NULL,
    resource        text NOT NULL CHECK (resource IN ('contact', 'matter')),
    record_id       text NOT NULL,
    deleted_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (firm_id, resource, record_id)
);
