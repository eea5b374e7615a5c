-- Why a pull request's recorded head could not be read (a tree git refuses,
-- or one too large to compare); NULL when it was read. A refused head
-- touches no change, and its aggregate commit status says `failure`.
-- Keep the SQLite and Postgres files in step.
ALTER TABLE pull_requests ADD COLUMN refused TEXT;
