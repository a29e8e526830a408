-- My Sessions' search text, bounded so that its index entry always fits.
--
-- A btree entry holds at most 2704 bytes. search_text (migration 9) joined
-- whole fields, so a session whose subject and customer name were long in
-- bytes (998 characters of CJK, a 4 KiB mail subject) could not be indexed:
-- the insert of its session failed ("index row size … exceeds btree
-- version 4 maximum 2704"), and the task could never be offered or picked
-- up. Each field is now cut, on a character boundary and after lower-casing
-- (which can change a text's length in bytes), to a number of bytes: the
-- customer's name 256, their address 320, the tags 800, the subject 1000.
-- The entry is then at most about 2,500 bytes, whatever the fields hold.
-- search_clipped marks the rare rows where a field was cut; they have an index
-- of their own, and a search checks them field by field on the row as well,
-- so a word past the cut is still found.
--
-- Like migration 9, this rewrites user_sessions (the generated column) and
-- rebuilds the index, with the table locked meanwhile.

-- The first bytes of t, at most n of them, never half a character.
CREATE FUNCTION sb_clip_bytes_loop(t text, n integer) RETURNS text
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    r text := left(t, n);
BEGIN
    WHILE octet_length(r) > n LOOP
        -- A character is at most 4 bytes: cut at least what is over.
        r := left(r, char_length(r) - greatest(1, (octet_length(r) - n + 3) / 4));
    END LOOP;
    RETURN r;
END
$$;

-- The same, with the common case (the text fits) inlined into the column's
-- expression: not STRICT, since PostgreSQL inlines no STRICT SQL function
-- whose body holds a CASE (a NULL still gives NULL, through the loop).
CREATE FUNCTION sb_clip_bytes(t text, n integer) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN octet_length(t) <= n THEN t ELSE sb_clip_bytes_loop(t, n) END;

DROP INDEX user_sessions_agent_search;
ALTER TABLE user_sessions DROP COLUMN search_text;
ALTER TABLE user_sessions
    ADD COLUMN search_text TEXT GENERATED ALWAYS AS (
        sb_clip_bytes(lower(coalesce(subject, '')), 1000) || E'\n'
            || sb_clip_bytes(lower(coalesce(customer_name, '')), 256) || E'\n'
            || sb_clip_bytes(lower(coalesce(customer_address, '')), 320) || E'\n'
            || sb_clip_bytes(lower(tags), 800)
    ) STORED,
    ADD COLUMN search_clipped BOOLEAN GENERATED ALWAYS AS (
        octet_length(lower(coalesce(subject, ''))) > 1000
            OR octet_length(lower(coalesce(customer_name, ''))) > 256
            OR octet_length(lower(coalesce(customer_address, ''))) > 320
            OR octet_length(lower(tags)) > 800
    ) STORED;

CREATE INDEX user_sessions_agent_search ON user_sessions (agent_id, created_at DESC, id DESC)
    INCLUDE (state, modality, search_text);
CREATE INDEX user_sessions_agent_clipped ON user_sessions (agent_id, created_at DESC, id DESC)
    WHERE search_clipped;
