-- Authors stored by 0013's first version missed those added by commits
-- that left no net change (an edit and its undo), so a restart forgot
-- them. Clearing the stored emails makes the next start read the branch
-- in full once, with every author. Keep the SQLite and Postgres files in
-- step.
UPDATE changes SET emails = NULL;
