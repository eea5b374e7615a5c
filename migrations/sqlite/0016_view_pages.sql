-- The stored view also in pages: each page holds the change rows' view
-- columns (digest, covered, emails, packed, outline) for the ids that hash
-- to it, LZ4-compressed, so a restart reads about a thousand rows, not one
-- per change. The pages are a copy: they count only while
-- branch_views.pages_at equals its updated_at, which every version's write
-- of the view sets, so a write by a version without pages (a rolling
-- upgrade, a rollback) leaves them unused until a start writes them again.
-- Keep the SQLite and Postgres files in step.
CREATE TABLE view_pages (
    branch  TEXT NOT NULL,
    page    BIGINT NOT NULL,
    body    BLOB NOT NULL,
    PRIMARY KEY (branch, page)
);
ALTER TABLE branch_views ADD COLUMN pages_at BIGINT;
