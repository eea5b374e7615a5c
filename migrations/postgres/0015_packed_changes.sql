-- Each change row also holds the change set as the server keeps it in
-- memory (model::OnBranch): `packed`, its LZ4-compressed definition with
-- a format byte, and `outline`, the JSON of what a pass over every change
-- needs (covered roots, dependencies, whether it rolls out). A restart
-- then loads the view without parsing or compressing a change set. Rows
-- without them (written before this migration) make the next start read
-- the branch in full once, which fills them. Keep the SQLite and Postgres
-- files in step.
ALTER TABLE changes ADD COLUMN packed BYTEA;
ALTER TABLE changes ADD COLUMN outline TEXT;
