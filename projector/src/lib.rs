//! The projector: materializes MySQL tables from the score event log.
//!
//! Data flows through these modules in order:
//!
//! 1. [`runner`]: the consumer loop; reads a batch of records (bounded size
//!    and wait), applies it, seeks back on a gap, retries outages.
//! 2. [`batch`]: pure logic; which records of a batch start at the stored
//!    positions, and whether each becomes a row or a dead letter.
//! 3. [`apply`]: one MySQL transaction per batch: lock the positions, write
//!    rows and dead letters, advance the positions, commit.
//! 4. [`store`]: the parameterized SQL of the `grade` projection.
//!
//! [`db`] owns connections and migrations, [`config`] the command line.
//! **Each event lands in `grade` exactly once: its position advances in the
//! same transaction as its row.**

pub mod apply;
pub mod batch;
pub mod config;
pub mod db;
pub mod runner;
pub mod store;

pub use config::{Cli, Command, RunArgs};
pub use runner::Projector;
