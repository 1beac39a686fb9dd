//! Personal data, kept so that one person can be forgotten in an immutable
//! log (crypto-shredding; the reasoning is in ARCHITECTURE.md).
//!
//! - An account is named in the log only by its [`AccountRef`], an
//!   HMAC-SHA256 of the phone number under a secret [`Pepper`]: the record
//!   key of its events, so that one account's events stay on one partition
//!   without the number in clear.
//! - The phone number, the comments and the submission digest of an event
//!   are sealed (AES-256-GCM) under a [`DataKey`], a random key with an id
//!   (`kid`) of its own, used for one account only. The account is bound
//!   into every sealed value (with the event id and the key id), and each
//!   sealed event names its key id in clear.
//! - Data keys live in a compacted topic, written in blocks: one record
//!   ([`KeyBlock`]) holds up to [`MAX_BLOCK_KEYS`] keys and is keyed by the
//!   block's id alone, so keys are written before it is known which
//!   accounts they will serve, many to a record. Forgetting an account
//!   finds its key ids in its events and rewrites each of their blocks
//!   without them ([`KeyBlock::without`]; a tombstone when nothing is
//!   left): compaction keeps only a record key's newest record, so once the
//!   broker's cleaner has run, no copy of the forgotten keys is left and
//!   nothing can open those events again. Only `projector forget` rewrites
//!   blocks, one at a time (it holds a lock while it does); writers only
//!   add new ones.
//!
//! A key is written, and acknowledged, before any event sealed under it, so
//! a reader that has read the key topic to its end after reading an event
//! and still has no key for it knows the key was forgotten.

use std::fmt;
use std::str::FromStr;

use aes_gcm::aead::{Aead, AeadInOut, Generate, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, SubsecRound, Utc};
use hmac::Mac;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

type HmacSha256 = hmac::Hmac<sha2_011::Sha256>;

/// How a forgotten account's placeholder ([`AccountRef::placeholder`])
/// begins.
pub const PLACEHOLDER_PREFIX: &str = "forgotten-";
/// The shortest pepper accepted, in bytes.
pub const MIN_PEPPER_BYTES: usize = 32;
/// The `type` of a record of the key topic holding one data key (version
/// 2, read as a block of one key whose id is the key's).
pub const DATA_KEY: &str = "DataKey";
/// The version of a single data key record still read.
pub const DATA_KEY_VERSION: u32 = 2;
/// The `type` of a block of data keys in the key topic.
pub const KEY_BLOCK: &str = "DataKeyBlock";
/// The version of a key block this code writes (and reads, beside
/// [`DATA_KEY_VERSION`]).
pub const KEY_BLOCK_VERSION: u32 = 3;
/// The most keys one block holds: about 140 bytes each, so a block stays
/// far below a record's size limit (1 MiB by default).
pub const MAX_BLOCK_KEYS: usize = 256;
/// The length of an AES-GCM nonce, written before the ciphertext.
const NONCE_BYTES: usize = 12;

/// The length of the AES-GCM tag, written after the ciphertext.
const TAG_BYTES: usize = 16;

/// The secret that turns phone numbers into [`AccountRef`]s. Every process
/// that writes or reads the log must have the same one; losing it means
/// account references can no longer be computed from a phone number (the
/// events stay readable, a person can no longer be found to be forgotten).
#[derive(Clone)]
pub struct Pepper(Vec<u8>);

/// Why a pepper was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PepperError {
    #[error("the account pepper must be base64 (for example `head -c 32 /dev/urandom | base64`)")]
    NotBase64,
    #[error("the account pepper must be at least {MIN_PEPPER_BYTES} bytes, not {0}")]
    TooShort(usize),
}

impl FromStr for Pepper {
    type Err = PepperError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bytes = BASE64
            .decode(text.trim())
            .map_err(|_| PepperError::NotBase64)?;
        if bytes.len() < MIN_PEPPER_BYTES {
            return Err(PepperError::TooShort(bytes.len()));
        }
        Ok(Self(bytes))
    }
}

impl fmt::Debug for Pepper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pepper(…)")
    }
}

/// Where a person's data keys are and what names their account.
#[derive(clap::Args, Clone, Debug)]
pub struct PersonalDataArgs {
    /// Secret (base64, at least 32 bytes: `head -c 32 /dev/urandom |
    /// base64`) under which phone numbers become account references, the
    /// record keys of the log. The same on every ingest API and projector,
    /// and never changed (see README, "Personal data"). Generated into
    /// `var/account-pepper.env` by `deploy/local`.
    #[arg(long, env = "SCORES_ACCOUNT_PEPPER", hide_env_values = true)]
    pub account_pepper: Option<PepperText>,

    /// A file holding the account pepper (a secret mounted by systemd or
    /// compose); used when `SCORES_ACCOUNT_PEPPER` is not set.
    #[arg(long, env = "SCORES_ACCOUNT_PEPPER_FILE")]
    pub account_pepper_file: Option<std::path::PathBuf>,

    /// The compacted topic holding each account's data keys.
    #[arg(long, env = "SCORES_KEYS_TOPIC", default_value = DEFAULT_KEYS_TOPIC)]
    pub keys_topic: String,
}

/// The default key topic.
pub const DEFAULT_KEYS_TOPIC: &str = "score-keys";

impl Default for PersonalDataArgs {
    /// No pepper; the default key topic.
    fn default() -> Self {
        Self {
            account_pepper: None,
            account_pepper_file: None,
            keys_topic: DEFAULT_KEYS_TOPIC.to_owned(),
        }
    }
}

/// The pepper as given, checked only by [`PersonalDataArgs::pepper`]: a
/// value clap refused would be echoed in its error message.
#[derive(Clone)]
pub struct PepperText(String);

impl FromStr for PepperText {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self(text.to_owned()))
    }
}

impl fmt::Debug for PepperText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PepperText(…)")
    }
}

impl From<&Pepper> for PepperText {
    fn from(pepper: &Pepper) -> Self {
        Self(BASE64.encode(&pepper.0))
    }
}

/// Why no pepper could be had from the settings.
#[derive(Debug, thiserror::Error)]
pub enum PepperSettingError {
    #[error(
        "no account pepper: set SCORES_ACCOUNT_PEPPER (base64, at least {MIN_PEPPER_BYTES} bytes: \
         `head -c 32 /dev/urandom | base64`) or SCORES_ACCOUNT_PEPPER_FILE"
    )]
    Missing,
    #[error("SCORES_ACCOUNT_PEPPER: {0}")]
    InvalidVariable(PepperError),
    #[error("reading the account pepper from {path}: {source}")]
    File {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the account pepper in {path}: {source}")]
    Invalid {
        path: std::path::PathBuf,
        source: PepperError,
    },
}

impl PersonalDataArgs {
    /// The pepper: the variable's, else the file's.
    ///
    /// # Errors
    ///
    /// [`PepperSettingError`] when neither is set, or the file cannot be
    /// read or holds no valid pepper.
    pub fn pepper(&self) -> Result<Pepper, PepperSettingError> {
        if let Some(PepperText(text)) = &self.account_pepper {
            return text.parse().map_err(PepperSettingError::InvalidVariable);
        }
        let path = self
            .account_pepper_file
            .as_ref()
            .ok_or(PepperSettingError::Missing)?;
        let text = std::fs::read_to_string(path).map_err(|source| PepperSettingError::File {
            path: path.clone(),
            source,
        })?;
        text.parse().map_err(|source| PepperSettingError::Invalid {
            path: path.clone(),
            source,
        })
    }
}

/// An account as the log names it: HMAC-SHA256 of the phone number under
/// the [`Pepper`]. Not reversible without the pepper; with it, only by
/// trying numbers. Written as 64 lowercase hexadecimal digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountRef([u8; 32]);

/// Text that is not an account reference.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("an account reference is 64 lowercase hexadecimal digits")]
pub struct InvalidAccountRef;

impl AccountRef {
    /// The reference of the account `acc_nbr`.
    pub fn of(pepper: &Pepper, acc_nbr: &str) -> Self {
        let mut mac = HmacSha256::new_from_slice(&pepper.0).expect("HMAC takes keys of any length");
        mac.update(acc_nbr.as_bytes());
        Self(mac.finalize().into_bytes().into())
    }

    /// The bytes of the reference.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// What stands in for the account in a table once it is forgotten:
    /// `forgotten-` and 20 hexadecimal digits of a hash of the reference.
    /// The same for all of one account's rows (so per-account counts hold)
    /// and different between accounts, and it leads back to no number.
    pub fn placeholder(&self) -> String {
        use sha2_011::Digest as _;
        let mut hasher = sha2_011::Sha256::new();
        hasher.update(b"score-pipeline forgotten account\n");
        hasher.update(self.0);
        let digest = hasher.finalize();
        format!("{PLACEHOLDER_PREFIX}{}", &hex::encode(digest)[..20])
    }
}

impl fmt::Display for AccountRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut hex = [0; 64];
        hex::encode_to_slice(self.0, &mut hex).expect("64 digits for 32 bytes");
        f.write_str(std::str::from_utf8(&hex).expect("hexadecimal digits are ASCII"))
    }
}

impl fmt::Debug for AccountRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountRef({self})")
    }
}

impl FromStr for AccountRef {
    type Err = InvalidAccountRef;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.len() != 64 || text.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(InvalidAccountRef);
        }
        let mut bytes = [0; 32];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| InvalidAccountRef)?;
        Ok(Self(bytes))
    }
}

impl Serialize for AccountRef {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AccountRef {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A random AES-256 key sealing some of one account's events. The key
/// itself names no account: whoever hands it out uses it for one account
/// only, and the account is bound into everything sealed under it.
#[derive(Clone, PartialEq, Eq)]
pub struct DataKey {
    pub kid: Uuid,
    pub created_at: DateTime<Utc>,
    key: [u8; 32],
}

/// Why sealed bytes could not be opened.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("the sealed value is shorter than its nonce")]
    Truncated,
    #[error(
        "the sealed value does not open under data key {kid} (altered, or sealed for another event)"
    )]
    Rejected { kid: Uuid },
}

impl DataKey {
    /// A new random key.
    pub fn generate() -> Self {
        Self {
            kid: Uuid::now_v7(),
            created_at: Utc::now().trunc_subsecs(6),
            key: Key::<Aes256Gcm>::generate().into(),
        }
    }

    /// Seals `plaintext` under a fresh random nonce; `context` (not secret,
    /// not stored) must be given again to open it, so a sealed value cannot
    /// be moved to another event.
    ///
    /// The nonce comes from the thread's cryptographically secure generator
    /// ([`rand::rng`], reseeded from the OS), which spares a system call per
    /// event; a key seals few events, so 96 random bits never repeat under
    /// one key in practice.
    pub fn seal(&self, context: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let nonce = Nonce::generate_from_rng(&mut rand::rng());
        let mut out = Vec::with_capacity(NONCE_BYTES + plaintext.len() + TAG_BYTES);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .cipher()
            .encrypt_inout_detached(&nonce, context, out[NONCE_BYTES..].as_mut().into())
            .expect("AES-GCM seals any plaintext shorter than 64 GiB");
        out.extend_from_slice(&tag);
        out
    }

    /// Opens what [`Self::seal`] sealed with the same `context`.
    ///
    /// # Errors
    ///
    /// [`OpenError`] when the bytes are too short, altered, sealed under
    /// another key or with another context.
    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < NONCE_BYTES {
            return Err(OpenError::Truncated);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_BYTES);
        let nonce = Nonce::try_from(nonce).map_err(|_| OpenError::Truncated)?;
        self.cipher()
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad: context,
                },
            )
            .map_err(|_| OpenError::Rejected { kid: self.kid })
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&self.key.into())
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("kid", &self.kid)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// Data keys written as one record of the key topic: a block id, when it
/// was written, and up to [`MAX_BLOCK_KEYS`] keys. Its record key is the
/// block id ([`block_record_key`]); a newer record under the same id
/// replaces the block (a key it no longer holds is forgotten), a tombstone
/// forgets all of its keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyBlock {
    id: Uuid,
    created_at: DateTime<Utc>,
    keys: Vec<DataKey>,
}

/// The bytes of one key in a block's record: its id, then the key.
const KEY_ENTRY_BYTES: usize = 16 + 32;

impl KeyBlock {
    /// A new block of `count` random keys (at least one, at most
    /// [`MAX_BLOCK_KEYS`]).
    pub fn generate(count: usize) -> Self {
        let created_at = Utc::now().trunc_subsecs(6);
        Self {
            id: Uuid::now_v7(),
            created_at,
            keys: (0..count.clamp(1, MAX_BLOCK_KEYS))
                .map(|_| DataKey {
                    created_at,
                    ..DataKey::generate()
                })
                .collect(),
        }
    }

    /// The block's id, its record key's.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The keys the block holds.
    pub fn keys(&self) -> &[DataKey] {
        &self.keys
    }

    /// The keys, for whoever hands them out.
    pub fn into_keys(self) -> Vec<DataKey> {
        self.keys
    }

    /// The block's record key in the key topic ([`block_record_key`]).
    pub fn record_key(&self) -> String {
        block_record_key(self.id)
    }

    /// The same block without the keys `forget` picks: what a rewrite of
    /// the block writes; `None` when no key is left (write the block's
    /// tombstone then).
    pub fn without(&self, forget: impl Fn(Uuid) -> bool) -> Option<Self> {
        let keys: Vec<DataKey> = self
            .keys
            .iter()
            .filter(|key| !forget(key.kid))
            .cloned()
            .collect();
        (!keys.is_empty()).then_some(Self {
            keys,
            ..self.clone()
        })
    }

    /// The block as its record in the key topic: a JSON object whose `keys`
    /// is one base64 string of each key's id and bytes (48 bytes a key), so
    /// that a reader decodes a block in one pass rather than a JSON object
    /// per key.
    pub fn encode(&self) -> Vec<u8> {
        let mut entries = Vec::with_capacity(self.keys.len() * KEY_ENTRY_BYTES);
        for key in &self.keys {
            entries.extend_from_slice(key.kid.as_bytes());
            entries.extend_from_slice(&key.key);
        }
        serde_json::to_vec(&BlockBody {
            record_type: KEY_BLOCK.to_owned(),
            version: KEY_BLOCK_VERSION,
            block: self.id,
            created_at: self.created_at,
            keys: BASE64.encode(entries),
        })
        .expect("a key block always serializes")
    }
}

/// The record key of block `id` in the key topic: its id, hyphenated. (A
/// version 2 record, one key, has its key id here: a block of one.)
pub fn block_record_key(id: Uuid) -> String {
    id.hyphenated().to_string()
}

/// What every record of the key topic begins with.
#[derive(Deserialize)]
struct Header {
    #[serde(rename = "type")]
    record_type: String,
    version: u32,
}

/// A version 2 record: one key.
#[derive(Deserialize)]
struct KeyBody {
    kid: Uuid,
    created_at: DateTime<Utc>,
    key: String,
}

#[derive(Serialize, Deserialize)]
struct BlockBody {
    #[serde(rename = "type")]
    record_type: String,
    version: u32,
    block: Uuid,
    created_at: DateTime<Utc>,
    keys: String,
}

impl BlockBody {
    fn into_block(self) -> Result<KeyBlock, KeyRecordError> {
        let entries = BASE64
            .decode(&self.keys)
            .map_err(|_| KeyRecordError::BadBody("the keys are not base64".into()))?;
        if entries.is_empty() || entries.len() % KEY_ENTRY_BYTES != 0 {
            return Err(KeyRecordError::BadBody(format!(
                "the keys are {} bytes, not a positive multiple of {KEY_ENTRY_BYTES}",
                entries.len()
            )));
        }
        let keys = entries
            .chunks_exact(KEY_ENTRY_BYTES)
            .map(|entry| {
                let (kid, key) = entry.split_at(16);
                DataKey {
                    kid: Uuid::from_slice(kid).expect("16 bytes"),
                    created_at: self.created_at,
                    key: key.try_into().expect("32 bytes"),
                }
            })
            .collect();
        Ok(KeyBlock {
            id: self.block,
            created_at: self.created_at,
            keys,
        })
    }
}

/// One record of the key topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRecord {
    /// A block of keys: all the block holds now.
    Block(KeyBlock),
    /// A tombstone: every key of block `block` is forgotten.
    Forgotten { block: Uuid },
}

/// Why a record of the key topic could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyRecordError {
    #[error("a key record's key must be a block id (a hyphenated UUID)")]
    BadRecordKey,
    #[error(
        "a key record is not a {KEY_BLOCK} v{KEY_BLOCK_VERSION} or {DATA_KEY} v{DATA_KEY_VERSION} \
         JSON object: {0}"
    )]
    BadBody(String),
    #[error("a key record's body does not match its record key")]
    Mismatch,
}

impl KeyRecord {
    /// Reads one record of the key topic: its record key and its payload
    /// (`None` for a tombstone). A version 2 record (one key, keyed by its
    /// key id) reads as a block of one, whose id is the key's.
    ///
    /// # Errors
    ///
    /// [`KeyRecordError`] when the record was not written by this code.
    pub fn decode(record_key: &[u8], payload: Option<&[u8]>) -> Result<Self, KeyRecordError> {
        let id: Uuid = std::str::from_utf8(record_key)
            .ok()
            .and_then(|key| Uuid::try_parse(key).ok())
            .ok_or(KeyRecordError::BadRecordKey)?;
        let Some(payload) = payload else {
            return Ok(Self::Forgotten { block: id });
        };
        let bad = |error: serde_json::Error| KeyRecordError::BadBody(error.to_string());
        let header: Header = serde_json::from_slice(payload).map_err(bad)?;
        let block = match (header.record_type.as_str(), header.version) {
            (KEY_BLOCK, KEY_BLOCK_VERSION) => serde_json::from_slice::<BlockBody>(payload)
                .map_err(bad)?
                .into_block()?,
            (DATA_KEY, DATA_KEY_VERSION) => {
                let body: KeyBody = serde_json::from_slice(payload).map_err(bad)?;
                let key: [u8; 32] = BASE64
                    .decode(&body.key)
                    .ok()
                    .and_then(|bytes| bytes.try_into().ok())
                    .ok_or_else(|| {
                        KeyRecordError::BadBody("a key is not 32 bytes of base64".into())
                    })?;
                KeyBlock {
                    id: body.kid,
                    created_at: body.created_at,
                    keys: vec![DataKey {
                        kid: body.kid,
                        created_at: body.created_at,
                        key,
                    }],
                }
            }
            (record_type, version) => {
                return Err(KeyRecordError::BadBody(format!(
                    "type {record_type:?} version {version}"
                )));
            }
        };
        if block.id != id {
            return Err(KeyRecordError::Mismatch);
        }
        Ok(Self::Block(block))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn pepper() -> Pepper {
        BASE64.encode([7u8; 32]).parse().unwrap()
    }

    #[test]
    fn a_pepper_must_be_base64_of_at_least_32_bytes() {
        assert_eq!(
            "not base64!".parse::<Pepper>().unwrap_err(),
            PepperError::NotBase64
        );
        assert_eq!(
            BASE64.encode([1u8; 31]).parse::<Pepper>().unwrap_err(),
            PepperError::TooShort(31)
        );
        assert!(format!("{:?}", pepper()).contains('…'));
    }

    #[test]
    fn the_pepper_comes_from_the_variable_else_the_file_else_a_clear_error() {
        let mut args = PersonalDataArgs::default();
        let error = args.pepper().unwrap_err().to_string();
        assert!(error.contains("SCORES_ACCOUNT_PEPPER"), "{error}");
        let dir = std::env::temp_dir().join(format!("pepper-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pepper");
        std::fs::write(&file, format!("{}\n", BASE64.encode([9u8; 32]))).unwrap();
        args.account_pepper_file = Some(file.clone());
        let from_file = args.pepper().unwrap();
        assert_eq!(
            AccountRef::of(&from_file, "1"),
            AccountRef::of(&BASE64.encode([9u8; 32]).parse().unwrap(), "1")
        );
        args.account_pepper = Some(PepperText::from(&pepper()));
        assert_eq!(
            AccountRef::of(&args.pepper().unwrap(), "1"),
            AccountRef::of(&pepper(), "1")
        );
        args.account_pepper = Some("c2hvcnQ=".parse().unwrap());
        let error = args.pepper().unwrap_err().to_string();
        assert!(error.contains("at least 32 bytes"), "{error}");
        assert!(
            !error.contains("c2hvcnQ="),
            "the value is never echoed: {error}"
        );
        std::fs::write(&file, "short").unwrap();
        args.account_pepper = None;
        assert!(matches!(
            args.pepper(),
            Err(PepperSettingError::Invalid { .. })
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_account_ref_depends_on_the_number_and_the_pepper_and_hides_both() {
        let one = AccountRef::of(&pepper(), "13800138000");
        assert_eq!(one, AccountRef::of(&pepper(), "13800138000"));
        assert_ne!(one, AccountRef::of(&pepper(), "13800138001"));
        let other_pepper: Pepper = BASE64.encode([8u8; 32]).parse().unwrap();
        assert_ne!(one, AccountRef::of(&other_pepper, "13800138000"));
        let text = one.to_string();
        assert_eq!(text.len(), 64);
        assert!(!text.contains("13800138000"));
        assert_eq!(text.parse::<AccountRef>().unwrap(), one);
        assert!(text.to_uppercase().parse::<AccountRef>().is_err());
        assert!(text[..63].parse::<AccountRef>().is_err());
    }

    #[test]
    fn placeholders_are_per_account_and_name_no_number() {
        let one = AccountRef::of(&pepper(), "13800138000");
        let two = AccountRef::of(&pepper(), "13800138001");
        assert_eq!(one.placeholder(), one.placeholder());
        assert_ne!(one.placeholder(), two.placeholder());
        assert!(one.placeholder().starts_with("forgotten-"));
        assert_eq!(one.placeholder().len(), "forgotten-".len() + 20);
        assert!(
            !one.to_string()
                .contains(&one.placeholder()["forgotten-".len()..])
        );
    }

    #[test]
    fn sealed_bytes_open_only_with_their_key_and_context() {
        let key = DataKey::generate();
        let sealed = key.seal(b"event 1", "服務很好".as_bytes());
        assert!(!String::from_utf8_lossy(&sealed).contains("服務很好"));
        assert_eq!(
            key.open(b"event 1", &sealed).unwrap(),
            "服務很好".as_bytes()
        );
        assert!(matches!(
            key.open(b"event 2", &sealed),
            Err(OpenError::Rejected { .. })
        ));
        let other = DataKey::generate();
        assert!(other.open(b"event 1", &sealed).is_err());
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(key.open(b"event 1", &altered).is_err());
        assert_eq!(
            key.open(b"event 1", &sealed[..5]),
            Err(OpenError::Truncated)
        );
        assert_ne!(
            key.seal(b"event 1", b"x"),
            key.seal(b"event 1", b"x"),
            "a fresh nonce each time"
        );
    }

    #[test]
    fn a_key_block_round_trips_and_its_tombstone_names_the_block() {
        let block = KeyBlock::generate(3);
        assert_eq!(block.keys().len(), 3);
        let record_key = block.record_key();
        assert_eq!(record_key, block.id().hyphenated().to_string());
        let body: serde_json::Value = serde_json::from_slice(&block.encode()).unwrap();
        assert_eq!(body["type"], "DataKeyBlock");
        assert_eq!(body["version"], 3);
        assert!(body.get("account_ref").is_none(), "{body}");
        let read = KeyRecord::decode(record_key.as_bytes(), Some(&block.encode())).unwrap();
        assert_eq!(read, KeyRecord::Block(block.clone()));
        let KeyRecord::Block(read) = read else {
            unreachable!()
        };
        let sealed = block.keys()[1].seal(b"c", b"secret");
        assert_eq!(read.keys()[1].open(b"c", &sealed).unwrap(), b"secret");
        assert_eq!(
            KeyRecord::decode(record_key.as_bytes(), None).unwrap(),
            KeyRecord::Forgotten { block: block.id() }
        );
        let key = &block.keys()[0];
        assert!(format!("{key:?}").contains("DataKey") && !format!("{key:?}").contains("key:"));
    }

    #[test]
    fn a_block_holds_one_to_the_most_keys() {
        assert_eq!(KeyBlock::generate(0).keys().len(), 1);
        assert_eq!(
            KeyBlock::generate(MAX_BLOCK_KEYS + 1).keys().len(),
            MAX_BLOCK_KEYS
        );
        let block = KeyBlock::generate(MAX_BLOCK_KEYS);
        assert!(
            block.encode().len() < 64 * 1024,
            "a full block is a small record"
        );
    }

    #[test]
    fn a_block_rewritten_without_a_key_keeps_the_others_and_an_empty_one_is_none() {
        let block = KeyBlock::generate(3);
        let forgotten = block.keys()[1].kid;
        let rewritten = block.without(|kid| kid == forgotten).unwrap();
        assert_eq!(rewritten.id(), block.id());
        assert_eq!(
            rewritten.keys(),
            [block.keys()[0].clone(), block.keys()[2].clone()]
        );
        let read = KeyRecord::decode(rewritten.record_key().as_bytes(), Some(&rewritten.encode()));
        assert_eq!(read.unwrap(), KeyRecord::Block(rewritten));
        assert_eq!(block.without(|_| true), None);
    }

    #[test]
    fn a_version_2_key_record_reads_as_a_block_of_one() {
        let block = KeyBlock::generate(1);
        let key = &block.keys()[0];
        let body = serde_json::json!({
            "type": "DataKey",
            "version": 2,
            "kid": key.kid,
            "created_at": key.created_at,
            "key": BASE64.encode(key.key),
        });
        let record_key = key.kid.hyphenated().to_string();
        let read = KeyRecord::decode(
            record_key.as_bytes(),
            Some(&serde_json::to_vec(&body).unwrap()),
        )
        .unwrap();
        let KeyRecord::Block(read) = read else {
            panic!("a block, not {read:?}")
        };
        assert_eq!(read.id(), key.kid);
        assert_eq!(read.keys(), std::slice::from_ref(key));
    }

    #[test]
    fn a_key_record_that_does_not_match_its_record_key_is_refused() {
        let block = KeyBlock::generate(1);
        let other = KeyBlock::generate(1);
        assert!(matches!(
            KeyRecord::decode(other.record_key().as_bytes(), Some(&block.encode())),
            Err(KeyRecordError::Mismatch)
        ));
        assert!(matches!(
            KeyRecord::decode(b"not-a-block-id", None),
            Err(KeyRecordError::BadRecordKey)
        ));
        let account = AccountRef::of(&pepper(), "13800138000");
        assert!(
            matches!(
                KeyRecord::decode(format!("{account}/{}", block.id()).as_bytes(), None),
                Err(KeyRecordError::BadRecordKey)
            ),
            "a key record names no account"
        );
        for body in [
            r#"{}"#.to_owned(),
            r#"{"type":"DataKeyBlock","version":4,"block":"x","keys":""}"#.to_owned(),
            format!(
                r#"{{"type":"DataKeyBlock","version":3,"block":"{}","created_at":"2026-12-03T00:00:00Z","keys":""}}"#,
                block.id()
            ),
            format!(
                r#"{{"type":"DataKeyBlock","version":3,"block":"{}","created_at":"2026-12-03T00:00:00Z","keys":"AAAA"}}"#,
                block.id()
            ),
        ] {
            assert!(
                matches!(
                    KeyRecord::decode(block.record_key().as_bytes(), Some(body.as_bytes())),
                    Err(KeyRecordError::BadBody(_))
                ),
                "{body}"
            );
        }
    }

    proptest! {
        #[test]
        fn anything_sealed_opens_to_itself(plaintext in proptest::collection::vec(any::<u8>(), 0..512),
                                           context in proptest::collection::vec(any::<u8>(), 0..64)) {
            let key = DataKey::generate();
            let sealed = key.seal(&context, &plaintext);
            prop_assert_eq!(key.open(&context, &sealed).unwrap(), plaintext);
        }
    }
}
