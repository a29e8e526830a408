-- My Sessions' search looks in the tags' own words, not in their JSON text.
--
-- The search table (migration 9) and the check on the row held the tags as
-- stored, a JSON array: a search for `"`, `[`, `]` or `,` matched every
-- session with tags (or every session: `[]` holds `[`), and a search could
-- span two tags (`a","b`). The tags now enter the search table one per line,
-- as their values (a tag holds no control character, so no line break); the
-- check on the row reads them the same way (src/store/sessions.rs). The
-- table is filled again from the sessions. After a VACUUM, rebuild it as
-- the last two statements below do (README, "Operations").

DROP TRIGGER user_sessions_search_insert;
DROP TRIGGER user_sessions_search_update;

CREATE TRIGGER user_sessions_search_insert AFTER INSERT ON user_sessions BEGIN
    INSERT INTO user_sessions_search (rowid, subject, customer_name, customer_address, tags)
    VALUES (((SELECT rowid FROM agents WHERE id = new.agent_id) << 40) + new.rowid,
            new.subject, new.customer_name, new.customer_address,
            (SELECT group_concat(value, char(10)) FROM json_each(new.tags)));
END;

CREATE TRIGGER user_sessions_search_update
AFTER UPDATE OF agent_id, subject, customer_name, customer_address, tags ON user_sessions BEGIN
    DELETE FROM user_sessions_search
    WHERE rowid = ((SELECT rowid FROM agents WHERE id = old.agent_id) << 40) + old.rowid;
    INSERT INTO user_sessions_search (rowid, subject, customer_name, customer_address, tags)
    VALUES (((SELECT rowid FROM agents WHERE id = new.agent_id) << 40) + new.rowid,
            new.subject, new.customer_name, new.customer_address,
            (SELECT group_concat(value, char(10)) FROM json_each(new.tags)));
END;

INSERT INTO user_sessions_search (user_sessions_search) VALUES ('delete-all');
INSERT INTO user_sessions_search (rowid, subject, customer_name, customer_address, tags)
    SELECT (a.rowid << 40) + s.rowid, s.subject, s.customer_name, s.customer_address,
           (SELECT group_concat(value, char(10)) FROM json_each(s.tags))
    FROM user_sessions s JOIN agents a ON a.id = s.agent_id;
