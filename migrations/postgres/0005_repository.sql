-- The configured GitHub repository's numeric id, pinned from the API on the
-- first start or sync. Deliveries are matched by this id, so a rename keeps
-- working and a new repository that takes the old name does not.
CREATE TABLE github_repository (
    full_name   TEXT PRIMARY KEY,   -- github.repository as configured, lower case
    repo_id     BIGINT NOT NULL,
    pinned_at   BIGINT NOT NULL
);
