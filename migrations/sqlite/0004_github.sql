-- GitHub pull requests, reviews and commit statuses (SQLite). Keep in step with ../postgres/0004_github.sql.

-- A pull request's base commit and whether it was merged (closed alone is not).
ALTER TABLE pull_requests ADD COLUMN base_sha TEXT NOT NULL DEFAULT '';
ALTER TABLE pull_requests ADD COLUMN merged BOOLEAN NOT NULL DEFAULT FALSE;

-- The digest of a change at a commit: a review binds to the digest at its
-- commit_id. 'absent' when the change does not exist there.
CREATE TABLE commit_digests (
    commit_sha  TEXT NOT NULL,
    change_id   TEXT NOT NULL,
    digest      TEXT NOT NULL,
    PRIMARY KEY (commit_sha, change_id)
);
CREATE INDEX reviews_by_pr ON reviews (pr_number);
CREATE INDEX pr_changes_by_change ON pr_changes (change_id);

-- Commit statuses: what each (sha, context) should show, and what GitHub
-- was last told. The poster sends rows where the two differ.
CREATE TABLE commit_statuses (
    sha                 TEXT NOT NULL,
    context             TEXT NOT NULL,
    state               TEXT NOT NULL,
    description         TEXT NOT NULL,
    target_url          TEXT NOT NULL,
    posted              TEXT,
    attempts            BIGINT NOT NULL DEFAULT 0,
    next_attempt_at     BIGINT NOT NULL DEFAULT 0,
    last_error          TEXT,
    updated_at          BIGINT NOT NULL,
    PRIMARY KEY (sha, context)
);

-- Inbox processing: when to try again, and how it ended
-- (applied | ignored | rejected).
ALTER TABLE inbox ADD COLUMN next_attempt_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE inbox ADD COLUMN outcome TEXT;
-- 'identity' or 'deflate': large payloads are stored compressed.
ALTER TABLE inbox ADD COLUMN encoding TEXT NOT NULL DEFAULT 'identity';
CREATE INDEX inbox_due ON inbox (processed_at, next_attempt_at);
