//! The contract of the score pipeline, in one place.
//!
//! Everything the ingest API and the projector must agree on lives here, in
//! the order a submission flows through it:
//!
//! 1. [`submission`]: the loosely typed fields a client sent ([`RawSubmission`])
//!    and the one function that turns them into a validated [`Submission`].
//! 2. [`domain`]: the validated newtypes ([`AccountNumber`], [`Grade`],
//!    [`CommentText`], [`Scene`]) and the configurable [`ValidationRules`]
//!    they obey.
//! 3. [`event`]: the `ScoreSubmitted` envelope written to the log, its encoder
//!    and the decoder that dispatches on `(type, version)`; [`digest`]: the
//!    fingerprint of a submission's content that gives an `Idempotency-Key`
//!    one meaning.
//! 4. [`kafka`]: client settings with safe defaults and topic provisioning.
//! 5. [`config`] and [`telemetry`]: the `SCORES_*` settings both binaries read
//!    and the one tracing setup they share.
//! 6. [`personal`]: account references, data keys and sealing, so that a
//!    person can be forgotten in an immutable log; [`privacy`]: masking of
//!    phone numbers before they reach a log line;
//!    [`shutdown`]: the stop signal (Ctrl-C or SIGTERM).
//!
//! No other crate defines the event schema or a validation rule.

pub mod config;
pub mod digest;
pub mod domain;
pub mod event;
pub mod kafka;
pub mod personal;
pub mod privacy;
pub mod shutdown;
pub mod submission;
pub mod telemetry;

pub use digest::{SubmissionContent, SubmissionDigest};
pub use domain::{AccountNumber, CommentText, Grade, Scene, ValidationRules};
pub use event::{AccountForgotten, Channel, DecodeError, Event, ScoreSubmitted, SealedScore};
pub use personal::{AccountRef, DataKey, KeyBlock, Pepper};
pub use privacy::masked;
pub use submission::{FIELD_NAMES, FieldError, RawSubmission, Submission, ValidationErrors};
