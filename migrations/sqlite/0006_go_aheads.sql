-- A go-ahead is for one attempt of one step at one digest: the step's next
-- attempt when it was given. The claim of that attempt uses it up; a retried
-- step, or a step whose digest changed, needs a new one. Go-aheads recorded
-- before this migration were bound to no digest: they are dropped, and must
-- be given again (failing closed).
DROP TABLE confirmations;
CREATE TABLE go_aheads (
    change_id   TEXT NOT NULL,
    step_id     TEXT NOT NULL,
    digest      TEXT NOT NULL,
    attempt_no  BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    reason      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (change_id, step_id, digest, attempt_no)
);
