-- Browser sign-in sessions of the agents' and operators' pages. The cookie
-- holds a random id; only its SHA-256 is stored, so a copy of the database
-- cannot sign anyone in. `token_hash` ties a session signed in with a token
-- to that token: when the token is revoked or replaced, the session ends.
-- `method` says how the agent signed in ('token'; later an SSO provider).
CREATE TABLE web_sessions (
    id_hash TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    method TEXT NOT NULL,
    token_hash TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX web_sessions_agent ON web_sessions (agent_id);
CREATE INDEX web_sessions_expires ON web_sessions (expires_at);

-- My Sessions shows an agent's live sessions above the history: this keeps
-- that first query short however long the history is.
CREATE INDEX user_sessions_agent_live ON user_sessions (agent_id, created_at DESC, id DESC)
    WHERE state <> 'concluded';
