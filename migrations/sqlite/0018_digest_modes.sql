-- Digests now bind each covered file's executable bit (README, "The
-- digest"). Digests recorded before cannot be told from new ones: a change
-- whose covered files are none of them executable keeps its digest, so an
-- old digest of commit X equals the new digest of X with every executable
-- bit cleared. So:
-- - the digests recorded per reviewed commit are dropped: each GitHub
--   review is bound again, by the new formula, to what its commit holds,
--   when the next event for its pull request reads that commit;
-- - approvals given through the API, bound to a digest alone, are dropped:
--   they are asked for again (the audit log keeps each one).
-- Keep the SQLite and Postgres files in step.
DELETE FROM commit_digests;
DELETE FROM api_approvals;
