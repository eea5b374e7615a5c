-- The default branch's view, kept between starts (issue: restart in O(what
-- moved)). Keep the SQLite and Postgres files in step.
--
-- Each change row keeps what the server needs without reading git: its
-- covered paths (JSON [{path, blob}]) and the emails of the commits that
-- touched them (JSON [..], for authorship). Rows read by an older version
-- have NULL here, which makes the next start read the branch in full.
ALTER TABLE changes ADD COLUMN covered TEXT;
ALTER TABLE changes ADD COLUMN emails TEXT;

-- The commit the rows were read at, per branch, with the change sets there
-- that do not validate (re-checked on every move: a fix elsewhere, such as
-- an added script, can make them valid).
CREATE TABLE branch_views (
    branch      TEXT PRIMARY KEY,
    commit_sha  TEXT NOT NULL,
    invalid     TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);
