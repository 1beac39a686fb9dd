-- What an Idempotency-Key means: each projection remembers the digest of
-- the submission it applied under an event id (SHA-256 of the content, 64
-- hexadecimal digits, see score_shared::digest), so that a later event with
-- the same id and other content is recognized as a conflict (first write
-- wins; the later one becomes a dead letter `idempotency_conflict`) while an
-- honest retry stays a silent duplicate.
--
-- The columns are added last, so analysts' column order is unchanged. Rows
-- projected before this migration keep NULL: the projector computes a
-- grade row's digest from its content when it needs it;
-- account_summary_event holds no content, so for its older rows a later
-- event with the same id counts as a duplicate (grade still records the
-- conflict).
ALTER TABLE grade
    ADD COLUMN submission_digest CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL
        COMMENT 'SHA-256 of the submission content (NULL: projected before digests)';

ALTER TABLE account_summary_event
    ADD COLUMN submission_digest CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL
        COMMENT 'SHA-256 of the submission content (NULL: counted before digests)';
