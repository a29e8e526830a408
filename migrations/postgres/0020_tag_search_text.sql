-- My Sessions' search looks in the tags' own words, not in their JSON text.
--
-- search_text (migration 15) held lower(tags), the JSON array as stored:
-- a search for `"`, `[`, `]` or `,` matched every session with tags (or
-- every session at all: `[]` holds `[`), and a search could span two tags
-- (`a","b`). The tags now enter the search text one per line, as their
-- values (a tag holds no control character, so no line break), like the
-- other fields. Like migration 15, this rewrites user_sessions (the
-- generated columns) and rebuilds its search indexes, with the table locked
-- meanwhile.

-- The tags of a session, one per line ('' for none).
CREATE FUNCTION sb_tag_text(tags text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN coalesce(
        (SELECT string_agg(t, E'\n' ORDER BY n)
         FROM jsonb_array_elements_text(tags::jsonb) WITH ORDINALITY AS e(t, n)),
        '');

DROP INDEX user_sessions_agent_search;
DROP INDEX user_sessions_agent_clipped;
ALTER TABLE user_sessions DROP COLUMN search_text, DROP COLUMN search_clipped;
ALTER TABLE user_sessions
    ADD COLUMN search_text TEXT GENERATED ALWAYS AS (
        sb_clip_bytes(lower(coalesce(subject, '')), 1000) || E'\n'
            || sb_clip_bytes(lower(coalesce(customer_name, '')), 256) || E'\n'
            || sb_clip_bytes(lower(coalesce(customer_address, '')), 320) || E'\n'
            || sb_clip_bytes(lower(sb_tag_text(tags)), 800)
    ) STORED,
    ADD COLUMN search_clipped BOOLEAN GENERATED ALWAYS AS (
        octet_length(lower(coalesce(subject, ''))) > 1000
            OR octet_length(lower(coalesce(customer_name, ''))) > 256
            OR octet_length(lower(coalesce(customer_address, ''))) > 320
            OR octet_length(lower(sb_tag_text(tags))) > 800
    ) STORED;

CREATE INDEX user_sessions_agent_search ON user_sessions (agent_id, created_at DESC, id DESC)
    INCLUDE (state, modality, search_text);
CREATE INDEX user_sessions_agent_clipped ON user_sessions (agent_id, created_at DESC, id DESC)
    WHERE search_clipped;
