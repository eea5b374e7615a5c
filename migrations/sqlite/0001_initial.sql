-- changegate schema v1 (SQLite). Keep in step with ../postgres/0001_initial.sql:
-- same tables, columns and constraints; only the dialect differs.
-- Times are unix milliseconds (BIGINT) so both backends compare them alike.

-- Changes as found on the default branch, and their digest at each commit seen.
CREATE TABLE changes (
    id              TEXT PRIMARY KEY,
    title           TEXT NOT NULL,
    kind            TEXT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'proposed',
    default_commit  TEXT NOT NULL,
    default_digest  TEXT NOT NULL,
    definition      TEXT NOT NULL,          -- the change set as JSON
    updated_at      BIGINT NOT NULL
);
CREATE TABLE change_digests (
    change_id   TEXT NOT NULL,
    commit_sha  TEXT NOT NULL,
    digest      TEXT NOT NULL,
    PRIMARY KEY (change_id, commit_sha)
);

-- Pull requests, who pushed to them, and their reviews.
CREATE TABLE pull_requests (
    number      BIGINT PRIMARY KEY,
    head_sha    TEXT NOT NULL,
    base_ref    TEXT NOT NULL,
    state       TEXT NOT NULL,
    opener      TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE TABLE pr_changes (
    pr_number   BIGINT NOT NULL,
    change_id   TEXT NOT NULL,
    digest      TEXT NOT NULL,
    PRIMARY KEY (pr_number, change_id)
);
CREATE TABLE pr_pushers (
    pr_number   BIGINT NOT NULL,
    login       TEXT NOT NULL,
    PRIMARY KEY (pr_number, login)
);
CREATE TABLE reviews (
    review_id    BIGINT PRIMARY KEY,
    pr_number    BIGINT NOT NULL,
    reviewer     TEXT NOT NULL,
    state        TEXT NOT NULL,
    commit_sha   TEXT NOT NULL,
    submitted_at BIGINT NOT NULL,
    dismissed    BOOLEAN NOT NULL DEFAULT FALSE
);

-- Approvals recorded through the API, bound to a digest.
CREATE TABLE api_approvals (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    change_id   TEXT NOT NULL,
    approver    TEXT NOT NULL,
    digest      TEXT NOT NULL,
    comment     TEXT NOT NULL DEFAULT '',
    created_at  BIGINT NOT NULL,
    -- failures of the change when recorded: after a failure the same
    -- approver can approve the same digest afresh (for `retry`)
    epoch       BIGINT NOT NULL DEFAULT 0,
    UNIQUE (change_id, approver, digest, epoch)
);

-- Execution: step attempts with leases, go-aheads, target locks.
CREATE TABLE attempts (
    id               TEXT PRIMARY KEY,
    change_id        TEXT NOT NULL,
    step_id          TEXT NOT NULL,
    attempt_no       BIGINT NOT NULL,
    executor         TEXT NOT NULL,
    digest           TEXT NOT NULL,
    state            TEXT NOT NULL,
    lease_expires_at BIGINT NOT NULL,
    started_at       BIGINT NOT NULL,
    ended_at         BIGINT,
    exit_code        BIGINT,
    output_tail      TEXT,
    UNIQUE (change_id, step_id, attempt_no)
);
CREATE TABLE confirmations (
    change_id   TEXT NOT NULL,
    step_id     TEXT NOT NULL,
    actor       TEXT NOT NULL,
    reason      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (change_id, step_id)
);
CREATE TABLE target_locks (
    target      TEXT PRIMARY KEY,            -- one holder per target, enforced here
    change_id   TEXT NOT NULL,
    locked_at   BIGINT NOT NULL
);

-- Webhook inbox: stored before the 2xx, deduplicated on the delivery id.
CREATE TABLE inbox (
    delivery_id   TEXT PRIMARY KEY,
    event         TEXT NOT NULL,
    body          BLOB NOT NULL,
    received_at   BIGINT NOT NULL,
    processed_at  BIGINT,
    attempts      BIGINT NOT NULL DEFAULT 0,
    last_error    TEXT
);

-- Alerts and their delivery outbox.
CREATE TABLE alerts (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,
    change_id    TEXT,
    step_id      TEXT,
    state        TEXT NOT NULL,              -- firing | resolved
    labels       TEXT NOT NULL,              -- JSON
    raised_at    BIGINT NOT NULL,
    resolved_at  BIGINT
);
CREATE TABLE outbox (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id         TEXT NOT NULL,
    sink             TEXT NOT NULL,
    payload          TEXT NOT NULL,
    state            TEXT NOT NULL,          -- pending | delivered | failing
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL,
    last_error       TEXT,
    created_at       BIGINT NOT NULL,
    delivered_at     BIGINT
);

-- Breakers (the step breaker and one per fleet action kind) and fleet actions asked for.
CREATE TABLE breakers (
    name          TEXT PRIMARY KEY,
    state         TEXT NOT NULL,             -- closed | open
    opened_at     BIGINT,
    reason        TEXT,
    reset_by      TEXT,
    reset_reason  TEXT
);
CREATE TABLE fleet_actions (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    decision  TEXT NOT NULL,                 -- allowed | locked | budget-spent
    at        BIGINT NOT NULL
);

-- The audit log: append-only and hash-chained. `audit_head` is the one row
-- every append locks first, so concurrent appenders serialise on it.
CREATE TABLE audit (
    seq        BIGINT PRIMARY KEY,
    at         BIGINT NOT NULL,
    actor      TEXT NOT NULL,
    kind       TEXT NOT NULL,
    change_id  TEXT,
    data       TEXT NOT NULL,                -- canonical JSON
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);
CREATE TABLE audit_head (
    id    BIGINT PRIMARY KEY CHECK (id = 1),
    seq   BIGINT NOT NULL,
    hash  TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
