-- A position is only trusted on the log it was taken from. Each position
-- also stores the digest of the record it stands on (the one at
-- next_offset - 1): a projector reading another log (another broker's data,
-- a recreated topic) finds a different record there, or none, and refuses
-- instead of taking that log's events as already applied.
-- NULL at offset 0 and for positions stored before this migration: those
-- are trusted once and carry a digest from their next advance on.
ALTER TABLE grade_position
    ADD COLUMN last_record CHAR(32) CHARACTER SET ascii COLLATE ascii_bin NULL
        COMMENT 'first 128 bits of SHA-256 of the key and payload of the record at next_offset - 1, hex'
        AFTER next_offset;
ALTER TABLE account_summary_position
    ADD COLUMN last_record CHAR(32) CHARACTER SET ascii COLLATE ascii_bin NULL
        COMMENT 'first 128 bits of SHA-256 of the key and payload of the record at next_offset - 1, hex'
        AFTER next_offset;
