//! The projector: materializes MySQL tables from the score event log, and
//! rebuilds them from it.
//!
//! Data flows through these modules in order:
//!
//! 1. [`runner`]: the live loop; resumes assigned partitions from MySQL
//!    (then it is ready: [`readiness`]), reads a batch of records (bounded
//!    size and wait), applies it to each projection, seeks back on a gap,
//!    and waits out outages.
//! 2. [`batch`]: pure logic; which records of a batch start at the stored
//!    positions, and whether each decodes to a row or a dead letter.
//!    [`identity`]: whether a stored position stands on the log being read
//!    (the digest of the record under it).
//! 3. [`apply`]: the engine; one MySQL transaction per batch and projection,
//!    under the projection's named lock: positions, rows, dead letters.
//! 4. [`projection`]: the projections (`grade`, `account_summary`), each a
//!    name, its tables and how events become rows; [`store`] holds the SQL
//!    every projection shares.
//!
//! Operator commands: [`rebuild`] (blue/green rebuild from the log),
//! [`status`], [`dead_letters`] (list and re-drive), [`import`] (the
//! original service's table into the log); those that read the topic
//! themselves do it with a [`log_reader::LogReader`]. [`observe`] keeps the metrics
//! (per batch, and lag sampled every few seconds) and serves them with
//! `/healthz` and `/readyz`. [`db`] owns connections
//! and migrations, [`config`] the command line.
//! **Each event lands in each projection exactly once: its position advances
//! in the same transaction as its rows, and is only trusted on the log it
//! was taken from.**

pub mod append;
pub mod apply;
pub mod batch;
pub mod config;
pub mod db;
pub mod dead_letters;
pub mod forget;
pub mod gaps;
pub mod identity;
pub mod import;
pub mod keys;
pub mod log_reader;
pub mod migrate_log;
pub mod observe;
pub mod progress;
pub mod projection;
pub mod readiness;
pub mod rebuild;
pub mod runner;
pub mod status;
pub mod store;

pub use config::{Cli, Command, RunArgs};
pub use runner::Projector;

/// The exit code of `run`, `rebuild` and `status` when a stored position
/// does not stand on the log being read ([`identity::LogMismatch`]): the
/// tables were built from another log, and an operator must rebuild them.
pub const LOG_MISMATCH_EXIT_CODE: i32 = 3;
