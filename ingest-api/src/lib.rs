//! The ingest API: the HTTP front door of the score pipeline.
//!
//! A request flows through these modules in order:
//!
//! 1. [`routes`]: one filter function per endpoint; checks method, media
//!    type, `Idempotency-Key` and the body size limit.
//! 2. [`wire`]: decodes the body (the mini-program's legacy form, or JSON)
//!    into a [`score_shared::RawSubmission`].
//! 3. [`handlers`]: validates it with [`score_shared::Submission::parse`],
//!    builds the `ScoreSubmitted` event, refuses a recently used
//!    `Idempotency-Key` that came with other content ([`idempotency`]) and
//!    hands the event to the publisher.
//! 4. [`publisher`]: seals the event under a data key of its account
//!    ([`data_keys`]: written to the key topic and acknowledged before any
//!    event sealed under it, then reused for a short while), appends it to
//!    Kafka keyed by the account's reference and waits for the broker's
//!    acknowledgment (`acks=all`, idempotent producer), bounded in time.
//! 5. [`error`]: the one place errors become responses, in the format of
//!    the door they came through.
//!
//! Each accepted submission's answer also carries a results token
//! ([`read_token`]): signed by the server, bound to the account number, it
//! is what lets its bearer read that account's results later.
//!
//! The read side is apart from it: [`results`] answers an account's
//! submissions and averages from the `grade` projection in MySQL (through a
//! read-only account), once [`read_token`] has accepted the request's
//! results token for that account (before any MySQL work) and after
//! [`consistency`] has waited, bounded, for the projection to pass the
//! consistency token a submission's answer carried.
//! [`handlers::pages`] serves the scoring web page and `openapi.json`.
//!
//! [`startup`] binds and runs it all: it caps connections and takes each
//! request's place in flight ([`limits`]) before any other work, then runs
//! it through [`observe`] (request id, its span, HTTP metrics); it serves
//! `/metrics` on an address of its own and keeps [`readiness`] refreshed in
//! the background. [`config`] lists every setting.
//! **A 2xx is sent only after the broker acknowledged the event, and the
//! data key it is sealed under before it.**
//! **No phone number or comment reaches the log in clear.**
//! **Submissions never depend on MySQL.**
//! **Results are read only with a valid results token for their account.**

pub mod config;
pub mod consistency;
pub mod data_keys;
pub mod error;
pub mod handlers;
pub mod idempotency;
pub mod key_pool;
pub mod limits;
pub mod memory;
pub mod observe;
pub mod publisher;
pub mod read_token;
pub mod readiness;
pub mod results;
pub mod routes;
pub mod startup;
pub mod wire;

pub use config::Config;
pub use startup::Application;
