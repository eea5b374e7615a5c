-- Revisions (SPEC §13): each digest the default branch holds for a change id
-- is a revision. Attempts carry their digest already; a revision is recorded
-- at its first claim (with the commit `exec` must materialise to undo it),
-- completion is recorded on it, and abandonment belongs to one.
CREATE TABLE revisions (
    change_id       TEXT NOT NULL,
    digest          TEXT NOT NULL,
    commit_sha      TEXT NOT NULL,   -- '' for runs recorded before this migration
    first_claim_at  BIGINT NOT NULL,
    completed_at    BIGINT,
    PRIMARY KEY (change_id, digest)
);
INSERT INTO revisions (change_id, digest, commit_sha, first_claim_at)
    SELECT change_id, digest, '', MIN(started_at) FROM attempts GROUP BY change_id, digest;

-- An abandonment is of one revision. Earlier ones take the digest of the
-- change's last attempt, or '' (every revision) when it never ran.
CREATE TABLE revision_abandonments (
    change_id  TEXT NOT NULL,
    digest     TEXT NOT NULL,
    actor      TEXT NOT NULL,
    reason     TEXT NOT NULL,
    at         BIGINT NOT NULL,
    PRIMARY KEY (change_id, digest)
);
INSERT INTO revision_abandonments (change_id, digest, actor, reason, at)
    SELECT b.change_id,
           COALESCE((SELECT a.digest FROM attempts a WHERE a.change_id = b.change_id ORDER BY a.started_at DESC LIMIT 1), ''),
           b.actor, b.reason, b.at
    FROM abandonments b;
DROP TABLE abandonments;
ALTER TABLE revision_abandonments RENAME TO abandonments;

-- Pull requests are ordered by GitHub's own `updated_at` from now on (a late
-- delivery must not rewind a head); the ingest times stored so far are not
-- comparable with it, so the next delivery of each wins.
UPDATE pull_requests SET updated_at = 0;

-- No relabelling out of a policy: the kinds and targets of every earlier
-- revision on the default branch, as a JSON list of {kind, targets}, so the
-- policies that matched any of them keep governing the change.
ALTER TABLE changes ADD COLUMN previous_definition TEXT;
