-- Saved is final whatever the session's settings.
--
-- With `session_replication_role = replica` PostgreSQL skips every trigger
-- that is merely enabled, so the triggers of 0001 let a concluded session be
-- updated, deleted or truncated. Enabled ALWAYS, they fire in every role.
-- (`INSERT ... ON CONFLICT DO UPDATE` and `MERGE` fire the update and delete
-- triggers; a plain insert of an existing id is refused by the primary key.)

ALTER TABLE user_sessions ENABLE ALWAYS TRIGGER user_sessions_immutable_update;
ALTER TABLE user_sessions ENABLE ALWAYS TRIGGER user_sessions_immutable_delete;
ALTER TABLE user_sessions ENABLE ALWAYS TRIGGER user_sessions_no_truncate;
