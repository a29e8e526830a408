-- The head of one modality of a service's queue, read by a routing pass
-- behind a full queue head (a backlog of mail must not hide the chats and
-- calls behind it). Without this index that read walks the service's whole
-- queue to filter one modality; with it, it reads only the rows it returns.
-- Partial: only queued tasks are in it, so it stays small.
CREATE INDEX tasks_queue_modality ON tasks (service_id, modality, priority DESC, arrived_at, id)
    WHERE state = 'queued';
