-- The gate's facts (Postgres). Keep in step with ../sqlite/0002_gate.sql.

-- A change's state is derived from facts (attempts, approvals, abandonment), never stored.
ALTER TABLE changes DROP COLUMN state;

ALTER TABLE attempts ADD COLUMN duration_ms BIGINT;
-- A report that arrived after the lease expired: recorded, but it does not un-fail the change.
ALTER TABLE attempts ADD COLUMN late_report TEXT;

-- `retry` re-opens a failed step: one row per re-opened attempt.
CREATE TABLE retries (
    change_id      TEXT NOT NULL,
    step_id        TEXT NOT NULL,
    after_attempt  BIGINT NOT NULL,
    actor          TEXT NOT NULL,
    reason         TEXT NOT NULL,
    at             BIGINT NOT NULL,
    PRIMARY KEY (change_id, step_id, after_attempt)
);

-- `abandon` is terminal: one row per change.
CREATE TABLE abandonments (
    change_id  TEXT PRIMARY KEY,
    actor      TEXT NOT NULL,
    reason     TEXT NOT NULL,
    at         BIGINT NOT NULL
);

ALTER TABLE breakers ADD COLUMN reset_at BIGINT;
