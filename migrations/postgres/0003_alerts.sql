-- Alert delivery and fleet actions (Postgres). Keep in step with ../sqlite/0003_alerts.sql.

-- What an alert says beyond its labels: summary, description, output tail (JSON).
ALTER TABLE alerts ADD COLUMN annotations TEXT NOT NULL DEFAULT '{}';
-- Which sinks it goes to (JSON list of names), fixed when it is raised.
ALTER TABLE alerts ADD COLUMN sinks TEXT NOT NULL DEFAULT '[]';

-- One outbox row per alert, sink and event (firing or resolved).
ALTER TABLE outbox ADD COLUMN event TEXT NOT NULL DEFAULT 'firing';
CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
CREATE INDEX fleet_actions_recent ON fleet_actions (action, decision, at);
