-- BoxedClaw durable state, SQLite flavour. Same tables, columns and meaning as
-- migrations/postgres/0001_init.sql; only the column types differ (INTEGER is 64-bit here).
-- Times are unix seconds supplied by the gateway.

-- One row per conversation. conv_key is the canonical JSON of the ConversationKey (injective,
-- reversible); display_name and storage_name are the two names admins type.
CREATE TABLE conversations (
    conv_key     TEXT    NOT NULL PRIMARY KEY,
    display_name TEXT    NOT NULL,
    storage_name TEXT    NOT NULL,
    workspace    TEXT    NOT NULL,
    backend      TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    last_active  INTEGER NOT NULL
);
CREATE INDEX conversations_display_name ON conversations (display_name);
CREATE INDEX conversations_storage_name ON conversations (storage_name);
CREATE INDEX conversations_last_active ON conversations (last_active);

-- Inbound event ids already accepted. The primary key is what makes a re-delivery (or the same
-- event reaching a second replica) lose the race.
CREATE TABLE inbound_events (
    platform TEXT    NOT NULL,
    event_id TEXT    NOT NULL,
    seen_at  INTEGER NOT NULL,
    PRIMARY KEY (platform, event_id)
);
CREATE INDEX inbound_events_seen_at ON inbound_events (seen_at);

-- Approvals and the exact call each one is bound to (operation + its sha256).
CREATE TABLE approvals (
    id          TEXT    NOT NULL PRIMARY KEY,
    conv_key    TEXT    NOT NULL,
    requester   TEXT    NOT NULL,
    call_id     TEXT    NOT NULL,
    operation   TEXT    NOT NULL,
    call_hash   TEXT    NOT NULL,
    summary     TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    state       TEXT    NOT NULL CHECK (state IN
                    ('pending', 'approved', 'denied', 'expired', 'cancelled', 'executed')),
    decided_by  TEXT,
    decided_at  INTEGER,
    executed_at INTEGER
);
CREATE INDEX approvals_state ON approvals (state, created_at);

-- Replies not yet delivered. Rows are never deleted by the store: delivered and expired rows
-- stay as a record and are never returned for delivery again.
CREATE TABLE outbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    conv_key     TEXT    NOT NULL,
    payload      TEXT    NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    not_after    INTEGER NOT NULL,
    state        TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'expired')),
    delivered_at INTEGER,
    expired_at   INTEGER
);
CREATE INDEX outbox_state ON outbox (state, id);

-- Tokens used per subject per UTC day (day = unix seconds / 86400).
CREATE TABLE token_usage (
    subject_kind TEXT    NOT NULL CHECK (subject_kind IN ('conversation', 'user')),
    subject      TEXT    NOT NULL,
    day          INTEGER NOT NULL,
    tokens       INTEGER NOT NULL CHECK (tokens >= 0),
    PRIMARY KEY (subject_kind, subject, day)
);

-- Daily token budgets set by admins.
CREATE TABLE budgets (
    subject_kind   TEXT    NOT NULL CHECK (subject_kind IN ('conversation', 'user')),
    subject        TEXT    NOT NULL,
    tokens_per_day INTEGER NOT NULL CHECK (tokens_per_day >= 0),
    PRIMARY KEY (subject_kind, subject)
);

-- The hash-chained audit log. seq is assigned by the appender (head.seq + 1), not by the
-- database, so a deleted row leaves a visible gap.
CREATE TABLE audit_log (
    seq          INTEGER NOT NULL PRIMARY KEY,
    at           INTEGER NOT NULL,
    actor        TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    conversation TEXT,
    detail       TEXT    NOT NULL,
    prev_hash    TEXT    NOT NULL,
    hash         TEXT    NOT NULL
);
CREATE INDEX audit_log_conversation ON audit_log (conversation, seq);

-- The chain head: the last appended seq and hash. Appends lock it; verification compares the
-- end of the log with it, so deleting the newest rows is detected too.
CREATE TABLE audit_head (
    id   INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash TEXT    NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
