-- My Sessions search served by an index restricted to the agent's own rows:
-- an FTS5 table with the trigram tokenizer (substring matches, any case) over
-- subject, customer name, customer address and tags. Its rowid is
-- (the agent's rowid << 40) + the session's rowid, so one agent's entries are
-- one rowid range: `MATCH … AND rowid BETWEEN lo AND hi` reads only that
-- agent's part of each posting list. Contentless: it holds no copy of the text.
--
-- Triggers keep it in step with user_sessions on insert, update and delete.
-- Rowids of these tables are stable in SQLite except, possibly, across a
-- VACUUM; after one, rebuild the index (README, "Operations"):
--   DELETE FROM user_sessions_search;
--   INSERT INTO user_sessions_search (rowid, subject, customer_name, customer_address, tags)
--       SELECT (a.rowid << 40) + s.rowid, s.subject, s.customer_name, s.customer_address, s.tags
--       FROM user_sessions s JOIN agents a ON a.id = s.agent_id;
-- Until then a stale entry can only hide a match: every search re-checks the
-- agent and the text on the session row itself.
CREATE VIRTUAL TABLE user_sessions_search USING fts5 (
    subject, customer_name, customer_address, tags,
    content = '', contentless_delete = 1, tokenize = 'trigram'
);

INSERT INTO user_sessions_search (rowid, subject, customer_name, customer_address, tags)
    SELECT (a.rowid << 40) + s.rowid, s.subject, s.customer_name, s.customer_address, s.tags
    FROM user_sessions s JOIN agents a ON a.id = s.agent_id;

CREATE TRIGGER user_sessions_search_insert AFTER INSERT ON user_sessions BEGIN
    INSERT INTO user_sessions_search (rowid, subject, customer_name, customer_address, tags)
    VALUES (((SELECT rowid FROM agents WHERE id = new.agent_id) << 40) + new.rowid,
            new.subject, new.customer_name, new.customer_address, new.tags);
END;

CREATE TRIGGER user_sessions_search_update
AFTER UPDATE OF agent_id, subject, customer_name, customer_address, tags ON user_sessions BEGIN
    DELETE FROM user_sessions_search
    WHERE rowid = ((SELECT rowid FROM agents WHERE id = old.agent_id) << 40) + old.rowid;
    INSERT INTO user_sessions_search (rowid, subject, customer_name, customer_address, tags)
    VALUES (((SELECT rowid FROM agents WHERE id = new.agent_id) << 40) + new.rowid,
            new.subject, new.customer_name, new.customer_address, new.tags);
END;

CREATE TRIGGER user_sessions_search_delete AFTER DELETE ON user_sessions BEGIN
    DELETE FROM user_sessions_search
    WHERE rowid = ((SELECT rowid FROM agents WHERE id = old.agent_id) << 40) + old.rowid;
END;
