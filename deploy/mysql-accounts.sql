-- Least-privilege MySQL accounts for one pipeline database. Run as an
-- administrator, after setting:
--
--   SET @db = 'scores', @host = '%',
--       @projector_user = 'scores_projector', @projector_password = '…',
--       @analyst_user = 'scores_analyst', @analyst_password = '…';
--
-- `./deploy/local` does this for the local stack; the tests do it for each
-- test database. Re-running it is harmless (passwords are reset).
--
-- The projector owns the database: it migrates it, writes its projections
-- and, to rebuild one, creates, renames and drops that projection's tables.
-- It has no rights anywhere else. Analysts can only read; the ingest API
-- reads its results queries through the same read-only account.

SET @projector = CONCAT(QUOTE(@projector_user), '@', QUOTE(@host));
SET @analyst = CONCAT(QUOTE(@analyst_user), '@', QUOTE(@host));
SET @database = CONCAT('`', REPLACE(@db, '`', '``'), '`');

SET @statement = CONCAT('CREATE USER IF NOT EXISTS ', @projector, ' IDENTIFIED BY ', QUOTE(@projector_password));
PREPARE account_statement FROM @statement; EXECUTE account_statement;
SET @statement = CONCAT('ALTER USER ', @projector, ' IDENTIFIED BY ', QUOTE(@projector_password));
PREPARE account_statement FROM @statement; EXECUTE account_statement;
SET @statement = CONCAT('GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, ALTER, INDEX, CREATE VIEW, SHOW VIEW ON ',
                        @database, '.* TO ', @projector);
PREPARE account_statement FROM @statement; EXECUTE account_statement;

SET @statement = CONCAT('CREATE USER IF NOT EXISTS ', @analyst, ' IDENTIFIED BY ', QUOTE(@analyst_password));
PREPARE account_statement FROM @statement; EXECUTE account_statement;
SET @statement = CONCAT('ALTER USER ', @analyst, ' IDENTIFIED BY ', QUOTE(@analyst_password));
PREPARE account_statement FROM @statement; EXECUTE account_statement;
SET @statement = CONCAT('GRANT SELECT, SHOW VIEW ON ', @database, '.* TO ', @analyst);
PREPARE account_statement FROM @statement; EXECUTE account_statement;

DEALLOCATE PREPARE account_statement;
