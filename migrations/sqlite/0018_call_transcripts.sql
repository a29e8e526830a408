-- The transcript of a call task, as the telephony (or a transcription
-- service) posts it through `POST /api/v1/tasks/{id}/transcript`: one row
-- per line, stored once by the id the poster gave it (`external_id`), shown
-- in the order spoken (`spoken_at`, then the order received: `seq`).
CREATE TABLE call_transcript_lines (
    id TEXT PRIMARY KEY,
    task_id TEXT NOT NULL REFERENCES tasks (id),
    external_id TEXT NOT NULL,
    speaker TEXT NOT NULL CHECK (speaker IN ('customer', 'agent', 'bot')),
    speaker_name TEXT,
    text TEXT NOT NULL,
    spoken_at BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    seq BIGINT NOT NULL
);
CREATE UNIQUE INDEX call_transcript_lines_external ON call_transcript_lines (task_id, external_id);
CREATE INDEX call_transcript_lines_task ON call_transcript_lines (task_id, spoken_at, seq);
