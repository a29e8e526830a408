-- Automatic mail kept without a task or conversation (auto-replies, bulk
-- mail and bounces under the `drop` policy, or with nothing to attach to),
-- listed newest first for operators (GET /api/v1/ops/recorded).
CREATE INDEX messages_recorded ON messages (received_at, id) WHERE disposition = 'recorded';
