//! MySQL connections and migrations.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};

use crate::config::DatabaseArgs;

/// The migrations in `migrations/`, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// How long a caller waits for a pooled connection before the attempt fails
/// (and is retried by the projector loop).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// A pool that connects lazily, so that a MySQL outage at start is retried by
/// the caller rather than failing the process. Sessions use UTC and utf8mb4
/// (sqlx's defaults, relied upon for `insert_time`).
///
/// # Errors
///
/// When the URL cannot be parsed.
pub fn pool(args: &DatabaseArgs) -> anyhow::Result<MySqlPool> {
    let options = MySqlConnectOptions::from_str(&args.database_url)
        .context("SCORES_DATABASE_URL is not a valid MySQL URL")?;
    Ok(MySqlPoolOptions::new()
        .max_connections(args.database_max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_lazy_with(options))
}

/// Creates the database if it is missing, then applies pending migrations.
///
/// # Errors
///
/// When MySQL cannot be reached or a migration fails.
pub async fn migrate(args: &DatabaseArgs, pool: &MySqlPool) -> anyhow::Result<()> {
    let url = args.database_url.as_str();
    if !sqlx::MySql::database_exists(url)
        .await
        .context("checking whether the database exists")?
    {
        sqlx::MySql::create_database(url)
            .await
            .context("creating the database")?;
        tracing::info!("created the database");
    }
    MIGRATOR.run(pool).await.context("applying migrations")?;
    Ok(())
}
