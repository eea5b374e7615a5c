-- What an alert is about, beside its kind: the fleet action of a spent
-- budget, the policy file and blob of an unapproved edit. Alerts are then
-- resolved by (kind, subject), never by matching a prefix of their id.
-- Keep the SQLite and Postgres files in step.
ALTER TABLE alerts ADD COLUMN subject TEXT NOT NULL DEFAULT '';

-- Earlier budget alerts: `action-budget:<action>:<13-digit unix ms>`.
UPDATE alerts SET kind = 'action-budget-spent', subject = substr(id, 15, length(id) - 28)
    WHERE substr(id, 1, 14) = 'action-budget:';
-- Earlier unapproved policy edits: `policy-unapproved:<path>@<blob>`.
UPDATE alerts SET subject = substr(id, 19) WHERE kind = 'policy-unapproved';

CREATE INDEX alerts_firing_kind ON alerts (state, kind, subject);
