-- Session details and conversation context: customer identity beyond name
-- and address, the internal directory of tenant users, context kept per
-- service after a session (opt-in, at most 30 days), and outbound webhooks
-- fed from the log of task changes in the same transaction.

-- A task's customer details (e-mail, phone in E.164, UPN, postal address,
-- IP), the language and the service address or number reached: its live
-- context with the custom parameters (`params`). Removed when the task ends.
ALTER TABLE tasks ADD COLUMN customer_details TEXT NOT NULL DEFAULT '{}';
ALTER TABLE tasks ADD COLUMN language TEXT;
ALTER TABLE tasks ADD COLUMN reached TEXT;
ALTER TABLE tasks ADD COLUMN context_cleared_at BIGINT;

ALTER TABLE contacts ADD COLUMN postal_address TEXT;
CREATE INDEX contacts_name ON contacts (lower(name));
-- Numbers were compared on digits; `00` is now the same number as `+`.
UPDATE contacts SET phone = '+' || substr(phone, 3) WHERE phone LIKE '00%';

-- A deleted service stays for the history that refers to it.
ALTER TABLE services ADD COLUMN deleted_at BIGINT;

-- The internal directory: tenant users (agents are in it too, by e-mail).
CREATE TABLE directory_users (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT,
    phone TEXT,
    upn TEXT,
    department TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX directory_users_email ON directory_users (email);
CREATE INDEX directory_users_phone ON directory_users (phone);
CREATE INDEX directory_users_upn ON directory_users (upn);

-- One row each time a task leaves a service (transferred, overflowed) or
-- ends in it (concluded, cancelled): what was known then, kept only when the
-- service keeps context (keep_days > 0, as set at that moment), and emptied
-- by the retention job when its days are over. Rows without data say "this
-- part of the task is over and nothing was kept".
CREATE TABLE context_records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL REFERENCES tasks (id),
    service_id TEXT NOT NULL,
    ended_at BIGINT NOT NULL,
    reason TEXT NOT NULL,
    keep_days BIGINT NOT NULL,
    customer_kind TEXT,
    customer_ref TEXT,
    customer_name TEXT,
    customer_address TEXT,
    subject TEXT,
    customer_details TEXT,
    params TEXT,
    language TEXT,
    reached TEXT,
    purged_at BIGINT
);
CREATE INDEX context_records_task ON context_records (task_id, service_id, ended_at);
CREATE INDEX context_records_kept ON context_records (ended_at) WHERE keep_days > 0 AND purged_at IS NULL;
CREATE INDEX context_records_service ON context_records (service_id) WHERE purged_at IS NULL;

-- Leaving a service: a record for the service left.
CREATE TRIGGER tasks_context_leaves_service
    AFTER UPDATE OF service_id ON tasks
    FOR EACH ROW WHEN NEW.service_id <> OLD.service_id
BEGIN
    INSERT INTO context_records (task_id, service_id, ended_at, reason, keep_days, customer_kind,
        customer_ref, customer_name, customer_address, subject, customer_details, params, language, reached)
    SELECT OLD.id, OLD.service_id, NEW.updated_at, 'transferred', k.days, OLD.customer_kind,
        OLD.customer_ref, OLD.customer_name, OLD.customer_address, OLD.subject,
        CASE WHEN k.days > 0 THEN OLD.customer_details END,
        CASE WHEN k.days > 0 THEN OLD.params END,
        CASE WHEN k.days > 0 THEN OLD.language END,
        CASE WHEN k.days > 0 THEN OLD.reached END
    FROM (SELECT COALESCE((SELECT CAST(json_extract(settings, '$.keep_context_days') AS INTEGER)
                           FROM services WHERE id = OLD.service_id AND deleted_at IS NULL), 0) AS days) AS k;
END;

-- Ending (concluded, cancelled): a record for the last service, then the
-- task's live context is removed.
CREATE TRIGGER tasks_context_ends
    AFTER UPDATE OF state ON tasks
    FOR EACH ROW WHEN NEW.state IN ('concluded', 'cancelled') AND OLD.state NOT IN ('concluded', 'cancelled')
BEGIN
    INSERT INTO context_records (task_id, service_id, ended_at, reason, keep_days, customer_kind,
        customer_ref, customer_name, customer_address, subject, customer_details, params, language, reached)
    SELECT NEW.id, NEW.service_id, NEW.updated_at, NEW.state, k.days, NEW.customer_kind,
        NEW.customer_ref, NEW.customer_name, NEW.customer_address, NEW.subject,
        CASE WHEN k.days > 0 THEN NEW.customer_details END,
        CASE WHEN k.days > 0 THEN NEW.params END,
        CASE WHEN k.days > 0 THEN NEW.language END,
        CASE WHEN k.days > 0 THEN NEW.reached END
    FROM (SELECT COALESCE((SELECT CAST(json_extract(settings, '$.keep_context_days') AS INTEGER)
                           FROM services WHERE id = NEW.service_id AND deleted_at IS NULL), 0) AS days) AS k;
    UPDATE tasks SET customer_details = '{}', params = '{}', language = NULL, reached = NULL,
        context_cleared_at = NEW.updated_at
    WHERE id = NEW.id;
END;

-- Every task, whatever made it (the API, mail, chat), announces itself.
CREATE TRIGGER tasks_created_change
    AFTER INSERT ON tasks
BEGIN
    INSERT INTO task_changes (task_id, kind, session_id, agent_id, payload, created_at)
    VALUES (NEW.id, 'task.created', NULL, NULL,
        json_object('task_id', NEW.id, 'service', NEW.service_id, 'modality', NEW.modality, 'state', NEW.state),
        NEW.updated_at);
END;

-- Jobs that run once per period in whichever worker claims them first.
CREATE TABLE periodic_jobs (
    name TEXT PRIMARY KEY,
    next_run_at BIGINT NOT NULL,
    last_run_at BIGINT,
    last_worker TEXT
);

-- Outbound webhooks: subscriptions, the event types each wants, and the
-- outbox of deliveries, written by a trigger in the transaction of the change.
CREATE TABLE webhook_subscriptions (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    description TEXT,
    active BOOLEAN NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE webhook_subscription_events (
    subscription_id TEXT NOT NULL REFERENCES webhook_subscriptions (id) ON DELETE CASCADE,
    event TEXT NOT NULL,
    PRIMARY KEY (subscription_id, event)
);
CREATE INDEX webhook_subscription_events_event ON webhook_subscription_events (event);

CREATE TABLE webhook_deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription_id TEXT NOT NULL REFERENCES webhook_subscriptions (id) ON DELETE CASCADE,
    change_id BIGINT NOT NULL,
    task_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    session_id TEXT,
    agent_id TEXT,
    payload TEXT NOT NULL,
    changed_at BIGINT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    retry_from BIGINT NOT NULL,
    claimed_until BIGINT,
    claimed_by TEXT,
    last_attempt_at BIGINT,
    last_status BIGINT,
    last_error TEXT,
    delivered_at BIGINT,
    dead_at BIGINT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at, id) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_order ON webhook_deliveries (subscription_id, task_id, id) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_state ON webhook_deliveries (state, id);
CREATE INDEX webhook_deliveries_task ON webhook_deliveries (task_id, id);

CREATE TRIGGER task_changes_webhooks
    AFTER INSERT ON task_changes
BEGIN
    INSERT INTO webhook_deliveries (subscription_id, change_id, task_id, kind, session_id, agent_id,
        payload, changed_at, state, attempts, next_attempt_at, retry_from)
    SELECT s.id, NEW.id, NEW.task_id, NEW.kind, NEW.session_id, NEW.agent_id,
        NEW.payload, NEW.created_at, 'pending', 0, NEW.created_at, NEW.created_at
    FROM webhook_subscriptions s
    WHERE s.active AND EXISTS (
        SELECT 1 FROM webhook_subscription_events e
        WHERE e.subscription_id = s.id AND e.event IN (NEW.kind, '*'));
END;
