-- Rollback (SPEC §11). Keep the SQLite and Postgres files in step.

-- Which way an attempt ran: a step forward, or its declared rollback.
-- Attempt numbers run across both, so `retries` re-opens either by number.
ALTER TABLE attempts ADD COLUMN phase TEXT NOT NULL DEFAULT 'step';

-- `rollback` of a failed revision: one row per revision, who and why.
CREATE TABLE rollbacks (
    change_id  TEXT NOT NULL,
    digest     TEXT NOT NULL,
    actor      TEXT NOT NULL,
    reason     TEXT NOT NULL,
    at         BIGINT NOT NULL,
    PRIMARY KEY (change_id, digest)
);

-- A rolled-back revision is over: no longer in flight, never completed.
ALTER TABLE revisions ADD COLUMN rolled_back_at BIGINT;
