-- The `grade` table keeps the column names of the original Flask service
-- (acc_nbr, grade1..3, txt1..3, insert_time) so that analysts' SQL keeps
-- working. Everything after insert_time is pipeline metadata.
--
-- insert_time is when the ingest API received the submission, taken from the
-- event (UTC), so a replay of the log reproduces it exactly.
CREATE TABLE IF NOT EXISTS grade (
    id              BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    acc_nbr         VARCHAR(64)     NOT NULL,
    grade1          INT             NOT NULL,
    grade2          INT             NOT NULL,
    grade3          INT             NOT NULL,
    txt1            TEXT            NOT NULL,
    txt2            TEXT            NOT NULL,
    txt3            TEXT            NOT NULL,
    insert_time     DATETIME(6)     NOT NULL COMMENT 'when the submission was received (UTC)',
    event_id        CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    channel         VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    kafka_partition INT             NOT NULL,
    kafka_offset    BIGINT          NOT NULL,
    projected_at    DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6) COMMENT 'when the projector wrote the row (UTC)',
    PRIMARY KEY (id),
    UNIQUE KEY grade_event_id (event_id),
    KEY grade_by_account (acc_nbr, insert_time),
    KEY grade_by_time (insert_time)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- Where each projection has got to in each partition of the log: the offset
-- of the next event to apply. Advanced in the same transaction as the rows
-- it covers, which is what makes projection exactly once.
CREATE TABLE IF NOT EXISTS projection_position (
    projection      VARCHAR(64)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    topic           VARCHAR(249) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    kafka_partition INT          NOT NULL,
    next_offset     BIGINT       NOT NULL,
    updated_at      DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (projection, topic, kafka_partition)
) ENGINE = InnoDB;

-- Events a projection could not apply (undecodable, unknown type or
-- version, invalid), kept with the reason so that the pipeline moves on and
-- nothing is lost.
CREATE TABLE IF NOT EXISTS dead_letter (
    id              BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    projection      VARCHAR(64)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    topic           VARCHAR(249) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    kafka_partition INT          NOT NULL,
    kafka_offset    BIGINT       NOT NULL,
    message_key     BLOB         NULL,
    payload         MEDIUMBLOB   NULL,
    error           TEXT         NOT NULL,
    failed_at       DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    UNIQUE KEY dead_letter_position (projection, topic, kafka_partition, kafka_offset),
    KEY dead_letter_by_time (failed_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
