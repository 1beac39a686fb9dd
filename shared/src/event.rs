//! The events written to the log.
//!
//! Every event is a self-describing JSON object: an envelope of `type` and
//! `version` beside the payload's fields, for example
//!
//! ```json
//! {"type":"ScoreSubmitted","version":1,"event_id":"0192…","occurred_at":"2026-11-25T08:00:00.123456Z",
//!  "channel":"legacy_form","acc_nbr":"13800138000","grade1":5,"grade2":4,"grade3":3,
//!  "txt1":"服務很好","txt2":"","txt3":""}
//! ```
//!
//! Readers dispatch on `(type, version)` and ignore fields they do not know,
//! so a writer may add optional fields without breaking older readers.
//!
//! Versions of `ScoreSubmitted`:
//! - 1: the fields above.
//! - 2: adds the optional `scene` (where in the mini-program the rating was
//!   made). A version 1 event reads as a version 2 event without a scene, so
//!   events already in the log keep projecting identically. Later, still
//!   version 2 since older readers ignore it: the optional `request_id` of
//!   the HTTP request that carried the submission (for tracing a row back
//!   to its log lines). Later still, and still version 2: the optional
//!   `submission_digest`, the [`SubmissionDigest`] of the content, which
//!   gives an idempotency key one meaning (see [`crate::digest`]). An event
//!   without it (written before, or by another tool) has the digest of its
//!   content, computed by [`ScoreSubmitted::submission_digest`].
//! - 3: [`SealedScore`], what the ingest API writes now. The phone number,
//!   the comments and the digest are sealed under a data key of the account
//!   (see [`crate::personal`]); the account is named by its
//!   [`AccountRef`], which is also the record key. The grades, time,
//!   channel, scene and request id stay in clear. Opened with its key, it
//!   reads as the version 2 event it was sealed from; once its key is
//!   forgotten, as [`SealedScore::forgotten`].
//!
//! `AccountForgotten` (version 1): an account was forgotten
//! ([`AccountForgotten`]); it names the account by its reference only.

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::digest::{SubmissionContent, SubmissionDigest};
use crate::domain::ValidationRules;
use crate::personal::{AccountRef, DataKey, OpenError};
use crate::submission::{FieldError, RawSubmission, Submission, ValidationErrors};

/// The `type` of a [`ScoreSubmitted`] event.
pub const SCORE_SUBMITTED: &str = "ScoreSubmitted";
/// The version of a plain [`ScoreSubmitted`] ([`ScoreSubmitted::encode`]).
pub const SCORE_SUBMITTED_VERSION: u32 = 2;
/// The version of a [`SealedScore`], what the ingest API writes.
pub const SEALED_SCORE_VERSION: u32 = 3;
/// Every version of `ScoreSubmitted` this code can read.
pub const SCORE_SUBMITTED_VERSIONS: [u32; 3] = [1, 2, 3];
/// The `type` of an [`AccountForgotten`] event.
pub const ACCOUNT_FORGOTTEN: &str = "AccountForgotten";
/// The version of [`AccountForgotten`] this code writes and reads.
pub const ACCOUNT_FORGOTTEN_VERSION: u32 = 1;

/// Namespace of the deterministic event ids derived from an idempotency key.
const IDEMPOTENCY_NAMESPACE: Uuid = Uuid::from_u128(0x6f1d_52a8_7c1e_4b0e_9a57_3c1f_0d2e_8b41);
/// Namespace of the deterministic event ids of imported legacy rows.
const LEGACY_IMPORT_NAMESPACE: Uuid = Uuid::from_u128(0x2b8e_4f0c_91d3_4a6e_b2c7_58e0_1f3a_9d64);

/// Through which door a submission came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// `POST /score` with the mini-program's form encoding.
    LegacyForm,
    /// `POST /score` with a JSON object body.
    LegacyJson,
    /// `POST /v1/scores`.
    ApiV1,
    /// A row of the original service's table, brought in by
    /// `projector import-legacy`.
    LegacyImport,
    /// A channel added by a newer writer; kept readable by older readers.
    #[serde(other)]
    Other,
}

impl Channel {
    /// The channel's name as written in events and in `grade.channel`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LegacyForm => "legacy_form",
            Self::LegacyJson => "legacy_json",
            Self::ApiV1 => "api_v1",
            Self::LegacyImport => "legacy_import",
            Self::Other => "other",
        }
    }
}

/// A person rated the service (version 2; version 1 had no `scene`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScoreSubmitted {
    pub event_id: Uuid,
    /// When the ingest API received the submission (microsecond precision,
    /// so that a replay into `DATETIME(6)` reproduces it exactly).
    pub occurred_at: DateTime<Utc>,
    pub channel: Channel,
    pub acc_nbr: String,
    pub grade1: i32,
    pub grade2: i32,
    pub grade3: i32,
    pub txt1: String,
    pub txt2: String,
    pub txt3: String,
    /// Since version 2; absent in version 1 events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scene: Option<String>,
    /// The id of the HTTP request that carried the submission, as in the
    /// ingest API's log lines; absent for events not written by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The digest of the content as the writer computed it; absent in
    /// events written before it existed. Read it through
    /// [`ScoreSubmitted::submission_digest`], which covers both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submission_digest: Option<SubmissionDigest>,
}

impl ScoreSubmitted {
    /// The event for a validated submission received now.
    pub fn new(event_id: Uuid, channel: Channel, submission: &Submission) -> Self {
        let [grade1, grade2, grade3] = submission.grades.map(|g| g.value());
        let [txt1, txt2, txt3] = submission.texts.clone().map(|t| t.into_inner());
        let mut event = Self {
            event_id,
            occurred_at: Utc::now().trunc_subsecs(6),
            channel,
            acc_nbr: submission.account.as_str().to_owned(),
            grade1,
            grade2,
            grade3,
            txt1,
            txt2,
            txt3,
            scene: submission.scene.as_ref().map(|s| s.as_str().to_owned()),
            request_id: None,
            submission_digest: None,
        };
        event.submission_digest = Some(event.content_digest());
        event
    }

    /// The content the digest covers: what the person rated, not how or
    /// when it travelled.
    pub fn content(&self) -> SubmissionContent<'_> {
        SubmissionContent {
            acc_nbr: &self.acc_nbr,
            grades: [self.grade1, self.grade2, self.grade3],
            texts: [&self.txt1, &self.txt2, &self.txt3],
            scene: self.scene.as_deref(),
        }
    }

    /// The digest of the event's content, computed now.
    pub fn content_digest(&self) -> SubmissionDigest {
        SubmissionDigest::of(&self.content())
    }

    /// The submission's digest: the one the event carries, or, for an event
    /// written without one, the digest of its content. [`Self::validate`]
    /// refuses an event whose carried digest is not its content's, so for a
    /// valid event the two agree.
    pub fn submission_digest(&self) -> SubmissionDigest {
        self.submission_digest
            .unwrap_or_else(|| self.content_digest())
    }

    /// The same event, carrying the id of the request it came with.
    pub fn with_request_id(mut self, request_id: impl Into<String>) -> Self {
        self.request_id = Some(request_id.into());
        self
    }

    /// Checks the payload against the rules, exactly as the ingest API did,
    /// and a carried digest against the content (a digest that is not the
    /// content's would let a different rating pass for a retry). The log
    /// may hold events written by other tools, so a reader checks.
    ///
    /// # Errors
    ///
    /// [`ValidationErrors`] naming each field that broke a rule.
    pub fn validate(&self, rules: &ValidationRules) -> Result<Submission, ValidationErrors> {
        let raw = RawSubmission {
            acc_nbr: Some(self.acc_nbr.clone().into()),
            grades: [self.grade1, self.grade2, self.grade3].map(|g| Some(g.into())),
            texts: [&self.txt1, &self.txt2, &self.txt3].map(|t| Some(t.clone().into())),
            scene: self.scene.clone().map(Into::into),
        };
        let parsed = Submission::parse(&raw, rules);
        let digest_matches = self
            .submission_digest
            .is_none_or(|carried| carried == self.content_digest());
        if digest_matches {
            return parsed;
        }
        let mut errors = parsed.err().map(|errors| errors.0).unwrap_or_default();
        errors.push(FieldError {
            field: "submission_digest",
            message: "must be the digest of the submission's content".to_owned(),
        });
        Err(ValidationErrors(errors))
    }

    /// Serializes the event with its envelope (version 2, in clear).
    pub fn encode(&self) -> Vec<u8> {
        encode_with_envelope(SCORE_SUBMITTED, SCORE_SUBMITTED_VERSION, self)
    }
}

/// A new random, time-ordered event id.
pub fn new_event_id() -> Uuid {
    Uuid::now_v7()
}

/// The event id for a client's retry-safe submission: the same idempotency
/// key for the same account always gives the same id.
pub fn idempotent_event_id(idempotency_key: &str, account: &str) -> Uuid {
    let mut name = Vec::with_capacity(idempotency_key.len() + account.len() + 1);
    name.extend_from_slice(account.as_bytes());
    // A separator that cannot occur in an account number keeps
    // ("1", "23") and ("12", "3") apart.
    name.push(b'\n');
    name.extend_from_slice(idempotency_key.as_bytes());
    Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, &name)
}

/// The event id of an imported legacy row: the same source and row
/// identity (its `id`, or its content and place among identical rows)
/// always give the same id, so an import can tell what it already
/// appended.
pub fn legacy_import_event_id(source: &str, row_identity: &str) -> Uuid {
    let mut name = Vec::with_capacity(source.len() + row_identity.len() + 1);
    name.extend_from_slice(source.as_bytes());
    name.push(b'\n');
    name.extend_from_slice(row_identity.as_bytes());
    Uuid::new_v5(&LEGACY_IMPORT_NAMESPACE, &name)
}

/// Every event this code can read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Versions 1 and 2: everything in clear.
    ScoreSubmitted(ScoreSubmitted),
    /// Version 3: the personal fields sealed.
    SealedScore(SealedScore),
    AccountForgotten(AccountForgotten),
}

/// The personal fields of a [`SealedScore`], sealed together: borrowed
/// (`&str`) when sealing, owned when opening.
#[derive(Serialize, Deserialize)]
struct PersonalFields<S> {
    acc_nbr: S,
    txt1: S,
    txt2: S,
    txt3: S,
    submission_digest: SubmissionDigest,
}

/// A `ScoreSubmitted` event of version 3: what is personal sealed under a
/// data key of the account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedScore {
    pub event_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub channel: Channel,
    pub grade1: i32,
    pub grade2: i32,
    pub grade3: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scene: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The account; also the event's record key.
    pub account_ref: AccountRef,
    /// The data key the personal fields are sealed under.
    pub kid: Uuid,
    /// Nonce and ciphertext of the personal fields, base64.
    #[serde(with = "base64_bytes")]
    pub sealed: Vec<u8>,
}

/// Why a [`SealedScore`] could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum UnsealError {
    #[error("event sealed under data key {sealed_under}, not key {given}")]
    WrongKey { sealed_under: Uuid, given: Uuid },
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("the sealed personal fields are malformed: {0}")]
    Malformed(serde_json::Error),
}

impl ScoreSubmitted {
    /// The event with its personal fields sealed under `key`, named by
    /// `account_ref`, which must be this event's account's reference
    /// ([`AccountRef::of`] its number): the key is used for that account
    /// only, and the reference is bound into the sealed value.
    pub fn seal(&self, account_ref: AccountRef, key: &DataKey) -> SealedScore {
        let personal = PersonalFields {
            acc_nbr: self.acc_nbr.as_str(),
            txt1: self.txt1.as_str(),
            txt2: self.txt2.as_str(),
            txt3: self.txt3.as_str(),
            submission_digest: self.submission_digest(),
        };
        let plaintext = serde_json::to_vec(&personal).expect("strings serialize");
        let context = seal_context(self.event_id, &account_ref, key.kid);
        SealedScore {
            event_id: self.event_id,
            occurred_at: self.occurred_at,
            channel: self.channel,
            grade1: self.grade1,
            grade2: self.grade2,
            grade3: self.grade3,
            scene: self.scene.clone(),
            request_id: self.request_id.clone(),
            account_ref,
            kid: key.kid,
            sealed: key.seal(&context, &plaintext),
        }
    }
}

/// What a sealed value is bound to: it opens only in the event, for the
/// account and under the key it was sealed for.
fn seal_context(event_id: Uuid, account_ref: &AccountRef, kid: Uuid) -> [u8; 64] {
    let mut context = [0; 64];
    context[..16].copy_from_slice(event_id.as_bytes());
    context[16..48].copy_from_slice(account_ref.as_bytes());
    context[48..].copy_from_slice(kid.as_bytes());
    context
}

impl SealedScore {
    /// The event's record key in the log: its account reference.
    pub fn record_key(&self) -> String {
        self.account_ref.to_string()
    }

    /// The event as it was before sealing.
    ///
    /// # Errors
    ///
    /// [`UnsealError`] when `key` is not the event's key or the sealed bytes
    /// do not open under it.
    pub fn open(&self, key: &DataKey) -> Result<ScoreSubmitted, UnsealError> {
        if key.kid != self.kid {
            return Err(UnsealError::WrongKey {
                sealed_under: self.kid,
                given: key.kid,
            });
        }
        let context = seal_context(self.event_id, &self.account_ref, self.kid);
        let plaintext = key.open(&context, &self.sealed)?;
        let personal: PersonalFields<String> =
            serde_json::from_slice(&plaintext).map_err(UnsealError::Malformed)?;
        Ok(self.with_personal(
            personal.acc_nbr,
            [personal.txt1, personal.txt2, personal.txt3],
            Some(personal.submission_digest),
        ))
    }

    /// What is left of the event once its key is forgotten: grades, time,
    /// channel and scene, under the account's placeholder, with empty
    /// comments and no digest.
    pub fn forgotten(&self) -> ScoreSubmitted {
        self.with_personal(
            self.account_ref.placeholder(),
            [String::new(), String::new(), String::new()],
            None,
        )
    }

    /// The event in clear with these personal fields.
    fn with_personal(
        &self,
        acc_nbr: String,
        [txt1, txt2, txt3]: [String; 3],
        submission_digest: Option<SubmissionDigest>,
    ) -> ScoreSubmitted {
        ScoreSubmitted {
            event_id: self.event_id,
            occurred_at: self.occurred_at,
            channel: self.channel,
            acc_nbr,
            grade1: self.grade1,
            grade2: self.grade2,
            grade3: self.grade3,
            txt1,
            txt2,
            txt3,
            scene: self.scene.clone(),
            request_id: self.request_id.clone(),
            submission_digest,
        }
    }

    /// Serializes the event with its envelope (version 3).
    pub fn encode(&self) -> Vec<u8> {
        encode_with_envelope(SCORE_SUBMITTED, SEALED_SCORE_VERSION, self)
    }
}

/// An account was forgotten: its data keys were removed from their key
/// blocks at `occurred_at`, and every projection removes it from its tables.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountForgotten {
    pub event_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    /// The account; also the event's record key, so the event follows the
    /// account's events on their partition.
    pub account_ref: AccountRef,
    /// Why, as the operator gave it (a ticket number, not the person's
    /// details).
    pub reason: String,
}

impl AccountForgotten {
    /// The erasure of `account_ref`, now.
    pub fn new(account_ref: AccountRef, reason: impl Into<String>) -> Self {
        Self {
            event_id: new_event_id(),
            occurred_at: Utc::now().trunc_subsecs(6),
            account_ref,
            reason: reason.into(),
        }
    }

    /// The event's record key in the log: its account reference.
    pub fn record_key(&self) -> String {
        self.account_ref.to_string()
    }

    /// Serializes the event with its envelope.
    pub fn encode(&self) -> Vec<u8> {
        encode_with_envelope(ACCOUNT_FORGOTTEN, ACCOUNT_FORGOTTEN_VERSION, self)
    }
}

fn encode_with_envelope(
    event_type: &'static str,
    version: u32,
    payload: &impl Serialize,
) -> Vec<u8> {
    #[derive(Serialize)]
    struct Envelope<'a, T> {
        #[serde(rename = "type")]
        event_type: &'static str,
        version: u32,
        #[serde(flatten)]
        payload: &'a T,
    }
    // Room for a typical event, so the writer does not grow the buffer
    // again and again as it goes.
    let mut encoded = Vec::with_capacity(1024);
    serde_json::to_writer(
        &mut encoded,
        &Envelope {
            event_type,
            version,
            payload,
        },
    )
    .expect("an event always serializes");
    encoded
}

mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

/// Why bytes read from the log are not an event this code understands.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("payload is not a JSON object with \"type\" and \"version\": {0}")]
    NoEnvelope(serde_json::Error),
    #[error("unknown event type {event_type:?} version {version}")]
    Unknown { event_type: String, version: u64 },
    #[error(
        "event type {event_type:?} version {version} is not enabled here (accepted versions: {accepted:?})"
    )]
    NotEnabled {
        event_type: &'static str,
        version: u32,
        accepted: Vec<u32>,
    },
    #[error("{event_type} v{version} payload is malformed: {source}")]
    Payload {
        event_type: &'static str,
        version: u64,
        source: serde_json::Error,
    },
}

/// Decodes one event, dispatching on its `(type, version)`, accepting every
/// version this code knows.
///
/// # Errors
///
/// [`DecodeError`] says whether the envelope, the type and version, or the
/// payload could not be read.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    decode_accepting(bytes, &SCORE_SUBMITTED_VERSIONS)
}

/// Like [`decode`], but a `ScoreSubmitted` version not in `accepted` is
/// refused as [`DecodeError::NotEnabled`] (a reader rolled out before its
/// writers, or one told to hold a version back).
///
/// # Errors
///
/// As [`decode`], plus [`DecodeError::NotEnabled`].
pub fn decode_accepting(bytes: &[u8], accepted: &[u32]) -> Result<Event, DecodeError> {
    #[derive(Deserialize)]
    struct Header {
        #[serde(rename = "type")]
        event_type: String,
        version: u64,
    }
    let header: Header = serde_json::from_slice(bytes).map_err(DecodeError::NoEnvelope)?;
    if header.event_type == ACCOUNT_FORGOTTEN
        && header.version == u64::from(ACCOUNT_FORGOTTEN_VERSION)
    {
        return serde_json::from_slice(bytes)
            .map(Event::AccountForgotten)
            .map_err(|source| DecodeError::Payload {
                event_type: ACCOUNT_FORGOTTEN,
                version: header.version,
                source,
            });
    }
    let version = match (header.event_type.as_str(), u32::try_from(header.version)) {
        (SCORE_SUBMITTED, Ok(version)) if SCORE_SUBMITTED_VERSIONS.contains(&version) => version,
        _ => {
            return Err(DecodeError::Unknown {
                event_type: header.event_type,
                version: header.version,
            });
        }
    };
    if !accepted.contains(&version) {
        return Err(DecodeError::NotEnabled {
            event_type: SCORE_SUBMITTED,
            version,
            accepted: accepted.to_vec(),
        });
    }
    let payload_error = |source| DecodeError::Payload {
        event_type: SCORE_SUBMITTED,
        version: u64::from(version),
        source,
    };
    if version == SEALED_SCORE_VERSION {
        return serde_json::from_slice(bytes)
            .map(Event::SealedScore)
            .map_err(payload_error);
    }
    let mut event: ScoreSubmitted = serde_json::from_slice(bytes).map_err(payload_error)?;
    if version == 1 {
        // Version 1 has no scene; a field of that name is an unknown field.
        event.scene = None;
    }
    Ok(Event::ScoreSubmitted(event))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event() -> ScoreSubmitted {
        let raw = RawSubmission {
            acc_nbr: Some(json!("13800138000")),
            grades: [Some(json!(5)), Some(json!(4)), Some(json!(3))],
            texts: [
                Some(json!("服務很好 👍")),
                Some(json!("'); DROP TABLE grade; --")),
                None,
            ],
            scene: Some(json!("pages/score/score")),
        };
        let submission = Submission::parse(&raw, &ValidationRules::default()).unwrap();
        ScoreSubmitted::new(new_event_id(), Channel::LegacyForm, &submission)
    }

    #[test]
    fn a_request_id_travels_with_the_event_and_is_left_out_when_absent() {
        let with = event().with_request_id("0193-req");
        let Event::ScoreSubmitted(decoded) = decode(&with.encode()).unwrap() else {
            panic!("a plain event")
        };
        assert_eq!(decoded.request_id.as_deref(), Some("0193-req"));
        let without: serde_json::Value = serde_json::from_slice(&event().encode()).unwrap();
        assert!(without.get("request_id").is_none());
    }

    fn account_of(event: &ScoreSubmitted) -> AccountRef {
        let pepper: crate::personal::Pepper = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
            .parse()
            .unwrap();
        AccountRef::of(&pepper, &event.acc_nbr)
    }

    #[test]
    fn a_sealed_event_opens_to_the_event_it_was_sealed_from_and_shows_nothing_personal() {
        let original = event();
        let account = account_of(&original);
        let key = DataKey::generate();
        let sealed = original.seal(account, &key);
        let bytes = sealed.encode();
        let text = String::from_utf8(bytes.clone()).unwrap();
        for personal in [
            "13800138000",
            "服務很好",
            "DROP TABLE",
            &original.content_digest().to_string(),
        ] {
            assert!(!text.contains(personal), "{personal} in {text}");
        }
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["version"], 3);
        assert_eq!(value["grade1"], 5);
        assert_eq!(value["account_ref"], account.to_string());
        assert_eq!(value["kid"], key.kid.to_string());
        let Event::SealedScore(decoded) = decode(&bytes).unwrap() else {
            panic!("a sealed event")
        };
        assert_eq!(decoded, sealed);
        assert_eq!(decoded.record_key(), account.to_string());
        assert_eq!(decoded.open(&key).unwrap(), original);
    }

    #[test]
    fn a_sealed_event_does_not_open_under_another_key_or_moved_to_another_event() {
        let original = event();
        let account = account_of(&original);
        let key = DataKey::generate();
        let sealed = original.seal(account, &key);
        let other = DataKey::generate();
        assert!(matches!(
            sealed.open(&other),
            Err(UnsealError::WrongKey { .. })
        ));
        let mut moved = sealed.clone();
        moved.event_id = new_event_id();
        assert!(matches!(moved.open(&key), Err(UnsealError::Open(_))));
        let mut renamed = sealed.clone();
        renamed.account_ref = account_of(&ScoreSubmitted {
            acc_nbr: "13900139000".into(),
            ..original.clone()
        });
        assert!(
            matches!(renamed.open(&key), Err(UnsealError::Open(_))),
            "sealed for one account, it opens for no other"
        );
    }

    #[test]
    fn a_forgotten_event_keeps_grades_time_and_channel_under_a_placeholder() {
        let original = event();
        let account = account_of(&original);
        let forgotten = original.seal(account, &DataKey::generate()).forgotten();
        assert_eq!(forgotten.acc_nbr, account.placeholder());
        assert_eq!(
            [forgotten.grade1, forgotten.grade2, forgotten.grade3],
            [5, 4, 3]
        );
        assert_eq!(forgotten.occurred_at, original.occurred_at);
        assert_eq!(forgotten.channel, original.channel);
        assert_eq!(forgotten.scene, original.scene);
        assert!(
            forgotten.txt1.is_empty() && forgotten.txt2.is_empty() && forgotten.txt3.is_empty()
        );
        assert_eq!(forgotten.submission_digest, None);
    }

    #[test]
    fn an_erasure_names_the_account_by_reference_only() {
        let account = account_of(&event());
        let erasure = AccountForgotten::new(account, "ticket 42");
        let bytes = erasure.encode();
        assert!(!String::from_utf8_lossy(&bytes).contains("13800138000"));
        let Event::AccountForgotten(decoded) = decode(&bytes).unwrap() else {
            panic!("an erasure")
        };
        assert_eq!(decoded, erasure);
        assert_eq!(decoded.record_key(), account.to_string());
    }

    #[test]
    fn legacy_import_ids_are_deterministic_and_keep_sources_apart() {
        let id = legacy_import_event_id("grade", "id:42");
        assert_eq!(id, legacy_import_event_id("grade", "id:42"));
        assert_ne!(id, legacy_import_event_id("grade", "id:43"));
        assert_ne!(id, legacy_import_event_id("grade_2019", "id:42"));
    }

    #[test]
    fn an_encoded_event_decodes_to_itself() {
        let original = event();
        let Event::ScoreSubmitted(decoded) = decode(&original.encode()).unwrap() else {
            panic!("a plain event")
        };
        assert_eq!(decoded, original);
    }

    #[test]
    fn the_envelope_names_type_and_version() {
        let value: serde_json::Value = serde_json::from_slice(&event().encode()).unwrap();
        assert_eq!(value["type"], "ScoreSubmitted");
        assert_eq!(value["version"], 2);
        assert_eq!(value["channel"], "legacy_form");
        assert_eq!(value["channel"], Channel::LegacyForm.as_str());
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let mut value: serde_json::Value = serde_json::from_slice(&event().encode()).unwrap();
        value["added_later"] = json!({"nested": true});
        let bytes = serde_json::to_vec(&value).unwrap();
        assert!(decode(&bytes).is_ok());
    }

    #[test]
    fn an_unknown_version_is_reported_as_such() {
        let mut value: serde_json::Value = serde_json::from_slice(&event().encode()).unwrap();
        value["version"] = json!(99);
        let error = decode(&serde_json::to_vec(&value).unwrap()).unwrap_err();
        assert!(
            matches!(error, DecodeError::Unknown { version: 99, .. }),
            "{error}"
        );
    }

    #[test]
    fn a_version_1_event_reads_without_a_scene() {
        let v1 = r#"{"type":"ScoreSubmitted","version":1,"event_id":"0192f0c4-1a2b-7c3d-8e4f-000000000001",
            "occurred_at":"2026-11-25T08:00:00.123456Z","channel":"legacy_form","acc_nbr":"13800138000",
            "grade1":5,"grade2":4,"grade3":3,"txt1":"好","txt2":"","txt3":"","scene":"ignored in v1"}"#;
        let Event::ScoreSubmitted(event) = decode(v1.as_bytes()).unwrap() else {
            panic!("a plain event")
        };
        assert_eq!(event.scene, None);
        assert_eq!(event.txt1, "好");
    }

    #[test]
    fn a_version_that_is_not_accepted_is_reported_as_not_enabled() {
        let error = decode_accepting(&event().encode(), &[1]).unwrap_err();
        assert!(
            matches!(error, DecodeError::NotEnabled { version: 2, .. }),
            "{error}"
        );
    }

    #[test]
    fn bytes_that_are_not_json_are_reported_as_such() {
        assert!(matches!(
            decode(b"\xff not json"),
            Err(DecodeError::NoEnvelope(_))
        ));
    }

    #[test]
    fn a_payload_missing_a_field_is_reported_as_such() {
        let mut value: serde_json::Value = serde_json::from_slice(&event().encode()).unwrap();
        value.as_object_mut().unwrap().remove("grade2");
        let error = decode(&serde_json::to_vec(&value).unwrap()).unwrap_err();
        assert!(matches!(error, DecodeError::Payload { .. }), "{error}");
    }

    #[test]
    fn an_unknown_channel_still_decodes() {
        let mut value: serde_json::Value = serde_json::from_slice(&event().encode()).unwrap();
        value["channel"] = json!("carrier_pigeon");
        let Event::ScoreSubmitted(decoded) = decode(&serde_json::to_vec(&value).unwrap()).unwrap()
        else {
            panic!("a plain event")
        };
        assert_eq!(decoded.channel, Channel::Other);
    }

    #[test]
    fn the_same_idempotency_key_and_account_give_the_same_event_id() {
        assert_eq!(
            idempotent_event_id("key-1", "13800138000"),
            idempotent_event_id("key-1", "13800138000")
        );
        assert_ne!(
            idempotent_event_id("key-1", "13800138000"),
            idempotent_event_id("key-1", "13800138001")
        );
        assert_ne!(
            idempotent_event_id("key-1", "13800138000"),
            idempotent_event_id("key-2", "13800138000")
        );
    }

    #[test]
    fn a_new_event_carries_the_digest_of_its_content() {
        let event = event();
        assert_eq!(event.submission_digest, Some(event.content_digest()));
        let value: serde_json::Value = serde_json::from_slice(&event.encode()).unwrap();
        assert_eq!(
            value["submission_digest"],
            event.content_digest().to_string(),
            "written as hexadecimal text"
        );
        let Event::ScoreSubmitted(decoded) = decode(&event.encode()).unwrap() else {
            panic!("a plain event")
        };
        assert_eq!(decoded.submission_digest, event.submission_digest);
    }

    #[test]
    fn an_event_without_a_digest_decodes_and_has_its_contents_digest() {
        let mut value: serde_json::Value = serde_json::from_slice(&event().encode()).unwrap();
        let carried = value.as_object_mut().unwrap().remove("submission_digest");
        assert!(carried.is_some());
        let Event::ScoreSubmitted(decoded) = decode(&serde_json::to_vec(&value).unwrap()).unwrap()
        else {
            panic!("a plain event")
        };
        assert_eq!(decoded.submission_digest, None);
        assert_eq!(decoded.submission_digest(), event().content_digest());
        assert!(decoded.validate(&ValidationRules::default()).is_ok());
    }

    #[test]
    fn the_digest_ignores_how_and_when_the_submission_travelled() {
        let first = event();
        let mut retry = event().with_request_id("another request");
        retry.channel = Channel::ApiV1;
        retry.event_id = new_event_id();
        retry.occurred_at += chrono::Duration::seconds(5);
        assert_eq!(retry.submission_digest(), first.submission_digest());
        let mut different = event();
        different.txt3 = "changed my mind".to_owned();
        assert_ne!(different.content_digest(), first.content_digest());
    }

    #[test]
    fn a_digest_that_is_not_hexadecimal_makes_the_payload_malformed() {
        let mut value: serde_json::Value = serde_json::from_slice(&event().encode()).unwrap();
        value["submission_digest"] = json!("not a digest");
        let error = decode(&serde_json::to_vec(&value).unwrap()).unwrap_err();
        assert!(matches!(error, DecodeError::Payload { .. }), "{error}");
    }

    #[test]
    fn an_event_whose_digest_is_not_its_contents_fails_validation() {
        let mut forged = event();
        forged.grade1 = 1;
        let errors = forged.validate(&ValidationRules::default()).unwrap_err();
        assert_eq!(errors.0.len(), 1, "{errors}");
        assert_eq!(errors.0[0].field, "submission_digest");
    }

    #[test]
    fn an_event_that_breaks_a_rule_fails_validation() {
        let mut invalid = event();
        invalid.grade2 = 9;
        invalid.submission_digest = None;
        let errors = invalid.validate(&ValidationRules::default()).unwrap_err();
        assert_eq!(errors.0[0].field, "grade2");
    }
}
