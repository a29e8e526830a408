-- Nothing notifies inside a transaction any more: PostgreSQL holds one lock
-- for the whole database while a transaction that notified commits (through
-- its WAL flush), so such transactions commit one at a time. The writers
-- announce their changes after the commit instead (src/store/announce.rs).
DROP TRIGGER tasks_routing_notify ON tasks;
DROP TRIGGER user_sessions_routing_notify ON user_sessions;
DROP FUNCTION switchboard_routing_notify();
DROP TRIGGER webhook_deliveries_notify ON webhook_deliveries;
DROP FUNCTION switchboard_webhooks_notify();
