-- The plan as one pull request comment (SPEC §12). Keep the SQLite and
-- Postgres files in step.
--
-- One row per pull request: the body it should show, the hash of what
-- GitHub was last given, and the comment's id once created. A poster
-- claims the row until `claimed_until`, so two replicas never both create
-- the comment.
CREATE TABLE plan_comments (
    pr_number        BIGINT PRIMARY KEY,
    body             TEXT NOT NULL,
    body_hash        TEXT NOT NULL,
    posted_hash      TEXT,
    comment_id       BIGINT,
    claimed_until    BIGINT NOT NULL DEFAULT 0,
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL DEFAULT 0,
    last_error       TEXT,
    updated_at       BIGINT NOT NULL
);
