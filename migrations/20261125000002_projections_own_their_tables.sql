-- Every projection owns its tables: its data tables, its position table
-- (`<projection>_position`) and its dead letters (`<projection>_dead_letter`).
-- A rebuild builds shadow copies of all of them and swaps them in with one
-- RENAME TABLE, so rows, positions and dead letters change together.
-- `projection_position` and `dead_letter` become views over all projections.

-- Event version 2 adds where in the mini-program the rating was made.
ALTER TABLE grade ADD COLUMN scene VARCHAR(128) NULL COMMENT 'page or scene the rating came from (event v2)' AFTER channel;

CREATE TABLE grade_position (
    topic           VARCHAR(249) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    kafka_partition INT          NOT NULL,
    next_offset     BIGINT       NOT NULL COMMENT 'offset of the next event to apply',
    last_event_at   DATETIME(6)  NULL     COMMENT 'occurred_at of the last event applied (UTC)',
    updated_at      DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (topic, kafka_partition)
) ENGINE = InnoDB;

INSERT INTO grade_position (topic, kafka_partition, next_offset, updated_at)
SELECT topic, kafka_partition, next_offset, updated_at FROM projection_position WHERE projection = 'grade';

CREATE TABLE grade_dead_letter (
    id              BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    topic           VARCHAR(249) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    kafka_partition INT          NOT NULL,
    kafka_offset    BIGINT       NOT NULL,
    message_key     BLOB         NULL,
    payload         MEDIUMBLOB   NULL,
    error           TEXT         NOT NULL,
    failed_at       DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    attempts        INT          NOT NULL DEFAULT 1,
    resolved_at     DATETIME(6)  NULL,
    resolution      VARCHAR(255) NULL,
    PRIMARY KEY (id),
    UNIQUE KEY grade_dead_letter_position (topic, kafka_partition, kafka_offset),
    KEY grade_dead_letter_open (resolved_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

INSERT INTO grade_dead_letter (topic, kafka_partition, kafka_offset, message_key, payload, error, failed_at)
SELECT topic, kafka_partition, kafka_offset, message_key, payload, error, failed_at
FROM dead_letter WHERE projection = 'grade';

DROP TABLE projection_position;
DROP TABLE dead_letter;

-- One row per account. Averages are derived from the sums so that a batch
-- only ever adds.
CREATE TABLE account_summary (
    acc_nbr             VARCHAR(64)   NOT NULL,
    submissions         BIGINT        NOT NULL,
    grade1_sum          BIGINT        NOT NULL,
    grade2_sum          BIGINT        NOT NULL,
    grade3_sum          BIGINT        NOT NULL,
    avg_grade1          DECIMAL(12,4) AS (grade1_sum / submissions) VIRTUAL,
    avg_grade2          DECIMAL(12,4) AS (grade2_sum / submissions) VIRTUAL,
    avg_grade3          DECIMAL(12,4) AS (grade3_sum / submissions) VIRTUAL,
    first_submission_at DATETIME(6)   NOT NULL,
    last_submission_at  DATETIME(6)   NOT NULL,
    PRIMARY KEY (acc_nbr)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- The events account_summary has counted, so that a client retry with the
-- same Idempotency-Key (a second record of the same event) counts once.
CREATE TABLE account_summary_event (
    event_id CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    PRIMARY KEY (event_id)
) ENGINE = InnoDB;

CREATE TABLE account_summary_position LIKE grade_position;
CREATE TABLE account_summary_dead_letter LIKE grade_dead_letter;

CREATE VIEW projection_position AS
    SELECT 'grade' AS projection, topic, kafka_partition, next_offset, last_event_at, updated_at FROM grade_position
    UNION ALL
    SELECT 'account_summary', topic, kafka_partition, next_offset, last_event_at, updated_at FROM account_summary_position;

CREATE VIEW dead_letter AS
    SELECT 'grade' AS projection, id, topic, kafka_partition, kafka_offset, message_key, payload, error,
           failed_at, attempts, resolved_at, resolution FROM grade_dead_letter
    UNION ALL
    SELECT 'account_summary', id, topic, kafka_partition, kafka_offset, message_key, payload, error,
           failed_at, attempts, resolved_at, resolution FROM account_summary_dead_letter;

-- Views for analysts. Days are UTC days.
CREATE VIEW grade_daily AS
    SELECT DATE(insert_time)          AS day,
           COUNT(*)                   AS submissions,
           COUNT(DISTINCT acc_nbr)    AS accounts,
           ROUND(AVG(grade1), 4)      AS avg_grade1,
           ROUND(AVG(grade2), 4)      AS avg_grade2,
           ROUND(AVG(grade3), 4)      AS avg_grade3
    FROM grade
    GROUP BY DATE(insert_time);

CREATE VIEW grade_by_channel AS
    SELECT channel, COUNT(*) AS submissions, MIN(insert_time) AS first_submission_at, MAX(insert_time) AS last_submission_at
    FROM grade
    GROUP BY channel;
