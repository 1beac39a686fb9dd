-- Issue 15: forgetting a person. Rows name their account's reference
-- (HMAC-SHA256 of acc_nbr under the account pepper, hex), by which an
-- AccountForgotten event finds them; each projection records the erasures
-- it applied; `projector forget` journals the requests it made.
-- Rows projected before this migration have no reference: rebuild each
-- projection once (`projector rebuild <name>`) to fill it.

ALTER TABLE grade
    ADD COLUMN account_ref CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL
        COMMENT 'HMAC-SHA256 of acc_nbr under the account pepper, hex (NULL: projected before references)',
    ADD KEY grade_by_account_ref (account_ref);

ALTER TABLE account_summary
    ADD COLUMN account_ref CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL
        COMMENT 'HMAC-SHA256 of acc_nbr under the account pepper, hex (NULL: counted before references)',
    ADD KEY account_summary_by_account_ref (account_ref);

ALTER TABLE account_summary_event
    ADD COLUMN account_ref CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL
        COMMENT 'the account of the event counted (NULL: counted before references)',
    ADD KEY account_summary_event_by_account_ref (account_ref);

CREATE TABLE grade_erasure (
    event_id     CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL COMMENT 'the AccountForgotten event',
    account_ref  CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    reason       TEXT        NOT NULL,
    requested_at DATETIME(6) NOT NULL COMMENT 'when the erasure was appended to the log (UTC)',
    rows_changed BIGINT      NOT NULL COMMENT 'rows the erasure changed or removed in this projection',
    applied_at   DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (event_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE account_summary_erasure LIKE grade_erasure;

CREATE TABLE erasure_request (
    event_id     CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL COMMENT 'the AccountForgotten event appended',
    account_ref  CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    reason       TEXT        NOT NULL,
    requested_at DATETIME(6) NOT NULL,
    keys_forgotten INT       NOT NULL COMMENT 'data keys tombstoned',
    PRIMARY KEY (event_id),
    KEY erasure_request_by_account_ref (account_ref)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
