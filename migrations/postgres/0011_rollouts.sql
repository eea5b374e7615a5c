-- Fleet rollouts (SPEC §10). Keep the SQLite and Postgres files in step.

-- The unit of claim is (step, target): a per-target step's attempts name
-- their target. Attempt numbers still run per step, across its targets,
-- so an attempt id and a retry's `after_attempt` stay unambiguous.
ALTER TABLE attempts ADD COLUMN target TEXT;

-- A rollout halted by a firing alert on a target it touched. Each halt
-- fails the revision until a later retry; the alert is named for the record.
CREATE TABLE halts (
    change_id  TEXT NOT NULL,
    digest     TEXT NOT NULL,
    alert      TEXT NOT NULL,
    detail     TEXT NOT NULL,
    at         BIGINT NOT NULL,
    PRIMARY KEY (change_id, digest, at)
);

-- Each write of an attempt stamps `seq` with the highest so far plus one,
-- under the single writer lock: a reader that has seen a change's attempts
-- up to some `seq` reads only the rows above it (src/store/attempt_cache.rs).
ALTER TABLE attempts ADD COLUMN seq BIGINT NOT NULL DEFAULT 0;
CREATE INDEX attempts_by_seq ON attempts (seq);
CREATE INDEX attempts_of_change_by_seq ON attempts (change_id, seq);
