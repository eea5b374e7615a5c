-- Policy edits are reviewed like changes (SPEC §13). With GitHub, the
-- policies in force are the last approved text of each file under
-- `policies/`: a revision merged without its approval does not take effect.
CREATE TABLE approved_policies (
    path         TEXT PRIMARY KEY,  -- e.g. policies/pg.yaml
    blob         TEXT NOT NULL,     -- git blob id of `text`
    text         TEXT NOT NULL,
    commit_sha   TEXT NOT NULL,     -- the default branch commit it was first in force at
    how          TEXT NOT NULL,     -- 'baseline' (in force before review) or 'reviewed'
    approved_at  BIGINT NOT NULL
);
-- Taken once, at the first start with GitHub: the policies then on the
-- default branch are approved by definition.
CREATE TABLE policy_baseline (
    id           BIGINT PRIMARY KEY CHECK (id = 1),
    commit_sha   TEXT NOT NULL,
    taken_at     BIGINT NOT NULL
);
