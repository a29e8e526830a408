-- Raw sources of incoming mail may be stored compressed (LZ4 block format
-- with the uncompressed size prepended, as lz4_flex writes it): `raw_encoding`
-- is 'lz4' then, NULL when `raw` holds the source as received. Written where
-- it saves at least an eighth; read back through the store, which unpacks.
ALTER TABLE messages ADD COLUMN raw_encoding TEXT CHECK (raw_encoding IN ('lz4'));
