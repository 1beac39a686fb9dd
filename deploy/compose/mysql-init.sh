#!/bin/bash
# Run once by the MySQL image's entrypoint on an empty data directory: the
# least-privilege accounts of deploy/mysql-accounts.sql for the database
# `scores`, passwords from the environment.
set -euo pipefail
mysql --protocol=socket -uroot -p"${MYSQL_ROOT_PASSWORD}" <<SQL
SET @db = 'scores', @host = '%',
    @projector_user = 'scores_projector', @projector_password = '${SCORES_PROJECTOR_DB_PASSWORD}',
    @analyst_user = 'scores_analyst', @analyst_password = '${SCORES_ANALYST_DB_PASSWORD}';
SOURCE /scores/mysql-accounts.sql;
SQL
