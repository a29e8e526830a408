-- Supervisors: agents who also read the work of their own services (every
-- task of them, with every session; their queues and agents), read-only.
ALTER TABLE agents ADD COLUMN supervisor BOOLEAN NOT NULL DEFAULT FALSE;
