//! Results tokens: the read capability a submission's answer carries.
//!
//! Results are private: an account's ratings are read only with a token the
//! server gave whoever rated with that account number. Every accepted
//! submission answers one (`X-Results-Token`, and `results_token` in the
//! `/v1` body); both results endpoints refuse a read without a valid one for
//! the account they are asked about.
//!
//! A token is the base64url (no padding) of
//!
//! ```text
//! version (1 byte, 1) | kid length (1 byte) | kid | expiry (8 bytes, big-endian unix seconds) | MAC (32 bytes)
//! ```
//!
//! where MAC is HMAC-SHA256 under the key named `kid`, over
//! `"scores-results-v1" | 0x00 | everything before the MAC | account number`.
//! The account number is not in the token: the verifier recomputes the MAC
//! with the account the request names, so a token for another account fails
//! exactly like a forged one, and a token shown to someone tells them
//! nothing but an expiry. The MAC is compared in constant time
//! ([`Mac::verify_slice`]).
//!
//! Keys rotate without a flag day: [`ResultsTokens`] holds several, the
//! first signs, every one listed verifies. Add the new key first, keep the
//! old one second until the tokens it signed have expired, then drop it: a
//! token signed by a dropped (retired) key names a `kid` no longer known and
//! is refused.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use hmac::{Hmac, KeyInit, Mac};
use score_shared::AccountNumber;
use sha2::Sha256;

/// The response header carrying a submission's results token.
pub const RESULTS_TOKEN_HEADER: &str = "x-results-token";

/// The setting holding the keys, named in every message about them.
pub const KEYS_SETTING: &str = "SCORES_RESULTS_TOKEN_KEYS";

/// How an operator makes a key: 32 random bytes, base64.
pub const MAKE_A_KEY: &str = "head -c 32 /dev/urandom | base64";

/// Fewest bytes a key may have: HMAC-SHA256's output size, so that the key
/// is never the weaker part.
pub const MIN_KEY_BYTES: usize = 32;

/// Longest key id: it travels in every token.
pub const KID_MAX_CHARS: usize = 16;

/// Domain separation: a MAC made here is never valid for anything else
/// signed with the same key.
const MAC_DOMAIN: &[u8] = b"scores-results-v1\0";

const FORMAT_VERSION: u8 = 1;
const MAC_BYTES: usize = 32;
const EXPIRY_BYTES: usize = 8;

/// Longest token text accepted for decoding: the longest token is
/// 2 + 16 + 8 + 32 = 58 bytes, 78 characters. Anything longer is refused
/// before any decoding work.
const TOKEN_MAX_CHARS: usize = 80;

type HmacSha256 = Hmac<Sha256>;

/// One key: its id, which tokens carry, and the HMAC keyed with its secret
/// (keyed once, when the keys are read; cloned for each token).
struct SigningKey {
    kid: String,
    keyed: HmacSha256,
}

/// The keys and lifetime of results tokens: issues them and checks them.
pub struct ResultsTokens {
    /// The first signs; all verify.
    keys: Vec<SigningKey>,
    ttl: Duration,
}

impl fmt::Debug for ResultsTokens {
    /// Key ids and lifetime only: the secrets never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|key| key.kid.as_str()).collect();
        f.debug_struct("ResultsTokens")
            .field("kids", &kids)
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// Why the key setting cannot be used. The messages name the entry by its
/// position and id, never a key's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeysError {
    #[error(
        "{KEYS_SETTING} is not set: every submission's answer carries a results token signed \
         with it, so the ingest API does not start without one; make a key with \
         `{MAKE_A_KEY}` and set {KEYS_SETTING}=k1:<that key> (or put that value in a file \
         named by SCORES_RESULTS_TOKEN_KEYS_FILE)"
    )]
    Missing,
    #[error(
        "{KEYS_SETTING} entry {position} must be `kid:base64key` (kid: 1 to {KID_MAX_CHARS} of \
         A-Z a-z 0-9 _ -); make a key with `{MAKE_A_KEY}`"
    )]
    Entry { position: usize },
    #[error("{KEYS_SETTING} entry {position} ({kid}): the key must be base64")]
    NotBase64 { position: usize, kid: String },
    #[error(
        "{KEYS_SETTING} entry {position} ({kid}): the key must be at least {MIN_KEY_BYTES} \
         bytes, it has {bytes}; make one with `{MAKE_A_KEY}`"
    )]
    TooShort {
        position: usize,
        kid: String,
        bytes: usize,
    },
    #[error("{KEYS_SETTING} lists the key id {kid} twice; each key needs an id of its own")]
    DuplicateKid { kid: String },
    #[error("SCORES_RESULTS_TOKEN_TTL_DAYS must be at least 1")]
    ZeroLifetime,
    #[error("SCORES_RESULTS_TOKEN_KEYS_FILE ({path}) cannot be read: {error}")]
    File { path: String, error: String },
    #[error("set {KEYS_SETTING} or SCORES_RESULTS_TOKEN_KEYS_FILE, not both")]
    Both,
}

/// Why a token was refused. Every kind gets the same answer; the kind is
/// for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No token came with the request.
    Missing,
    /// Not a token this server makes.
    Malformed,
    /// Signed by a key not (or no longer) listed.
    UnknownKey,
    /// The MAC does not match: tampered, forged, or for another account.
    BadSignature,
    /// Genuine, for this account, but past its expiry.
    Expired,
}

impl Refusal {
    /// The refusal as a log field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
        }
    }
}

impl ResultsTokens {
    /// The keys of `setting` (`kid:base64key`, comma separated; the first
    /// signs), issuing tokens that live `ttl`.
    ///
    /// # Errors
    ///
    /// A missing or empty setting, an entry that is not `kid:key`, a key
    /// that is not base64 or shorter than [`MIN_KEY_BYTES`], a key id given
    /// twice, a zero lifetime.
    pub fn parse(setting: Option<&str>, ttl: Duration) -> Result<Self, KeysError> {
        if ttl.is_zero() {
            return Err(KeysError::ZeroLifetime);
        }
        let setting = setting.map(str::trim).unwrap_or_default();
        if setting.is_empty() {
            return Err(KeysError::Missing);
        }
        let mut keys: Vec<SigningKey> = Vec::new();
        for (index, entry) in setting.split(',').enumerate() {
            let key = parse_entry(index + 1, entry.trim())?;
            if keys.iter().any(|known| known.kid == key.kid) {
                return Err(KeysError::DuplicateKid { kid: key.kid });
            }
            keys.push(key);
        }
        Ok(Self { keys, ttl })
    }

    /// How long a token issued now stays valid.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A token for `account`, valid from now for the configured lifetime.
    pub fn issue(&self, account: &AccountNumber) -> String {
        let expires_at = unix_now().saturating_add(self.ttl.as_secs());
        self.issue_expiring_at(account, expires_at)
    }

    /// A token for `account` that expires at `expires_at` (unix seconds),
    /// signed with the first key. Tests use it to make an expired token.
    pub fn issue_expiring_at(&self, account: &AccountNumber, expires_at: u64) -> String {
        let key = &self.keys[0];
        let mut token = header(&key.kid, expires_at);
        let tag = mac(&key.keyed, &token, account).finalize().into_bytes();
        token.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(token)
    }

    /// Whether `token` lets its bearer read `account`'s results now.
    ///
    /// # Errors
    ///
    /// Why it does not; every reason must be answered alike.
    pub fn verify(&self, token: Option<&str>, account: &AccountNumber) -> Result<(), Refusal> {
        self.verify_at(token, account, unix_now())
    }

    /// [`ResultsTokens::verify`] at `now` (unix seconds).
    ///
    /// # Errors
    ///
    /// Why the token does not let its bearer read `account`'s results.
    pub fn verify_at(
        &self,
        token: Option<&str>,
        account: &AccountNumber,
        now: u64,
    ) -> Result<(), Refusal> {
        let token = token
            .filter(|token| !token.is_empty())
            .ok_or(Refusal::Missing)?;
        if token.len() > TOKEN_MAX_CHARS {
            return Err(Refusal::Malformed);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| Refusal::Malformed)?;
        let parts = Parts::split(&bytes).ok_or(Refusal::Malformed)?;
        let key = self
            .keys
            .iter()
            .find(|key| key.kid.as_bytes() == parts.kid)
            .ok_or(Refusal::UnknownKey)?;
        // Constant time: the comparison takes as long wherever the tags
        // differ.
        mac(&key.keyed, parts.signed, account)
            .verify_slice(parts.tag)
            .map_err(|_| Refusal::BadSignature)?;
        if parts.expires_at <= now {
            return Err(Refusal::Expired);
        }
        Ok(())
    }
}

/// The parts of a decoded token.
struct Parts<'a> {
    kid: &'a [u8],
    expires_at: u64,
    /// Everything the MAC covers beside the account: all before the tag.
    signed: &'a [u8],
    tag: &'a [u8],
}

impl<'a> Parts<'a> {
    fn split(bytes: &'a [u8]) -> Option<Self> {
        let (&version, rest) = bytes.split_first()?;
        let (&kid_len, rest) = rest.split_first()?;
        let kid_len = usize::from(kid_len);
        if version != FORMAT_VERSION
            || !(1..=KID_MAX_CHARS).contains(&kid_len)
            || rest.len() != kid_len + EXPIRY_BYTES + MAC_BYTES
        {
            return None;
        }
        let (kid, rest) = rest.split_at(kid_len);
        let (expiry, tag) = rest.split_at(EXPIRY_BYTES);
        Some(Self {
            kid,
            expires_at: u64::from_be_bytes(expiry.try_into().ok()?),
            signed: &bytes[..bytes.len() - MAC_BYTES],
            tag,
        })
    }
}

/// Everything before the MAC.
fn header(kid: &str, expires_at: u64) -> Vec<u8> {
    let mut header = Vec::with_capacity(2 + kid.len() + EXPIRY_BYTES + MAC_BYTES);
    header.push(FORMAT_VERSION);
    // Key ids are at most KID_MAX_CHARS ASCII characters (checked when the
    // keys are read).
    header.push(kid.len() as u8);
    header.extend_from_slice(kid.as_bytes());
    header.extend_from_slice(&expires_at.to_be_bytes());
    header
}

/// The MAC state over the domain, `signed` and the account, ready to
/// finalize or verify.
fn mac(keyed: &HmacSha256, signed: &[u8], account: &AccountNumber) -> HmacSha256 {
    let mut mac = keyed.clone();
    mac.update(MAC_DOMAIN);
    mac.update(signed);
    mac.update(account.as_str().as_bytes());
    mac
}

fn parse_entry(position: usize, entry: &str) -> Result<SigningKey, KeysError> {
    let (kid, encoded) = entry.split_once(':').ok_or(KeysError::Entry { position })?;
    let kid = kid.trim();
    let kid_valid = (1..=KID_MAX_CHARS).contains(&kid.len())
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !kid_valid {
        return Err(KeysError::Entry { position });
    }
    let encoded = encoded.trim();
    let secret = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(encoded).ok())
        .ok_or_else(|| KeysError::NotBase64 {
            position,
            kid: kid.to_owned(),
        })?;
    if secret.len() < MIN_KEY_BYTES {
        return Err(KeysError::TooShort {
            position,
            kid: kid.to_owned(),
            bytes: secret.len(),
        });
    }
    // HMAC takes keys of any length; ours are at least 32 bytes.
    let keyed =
        <HmacSha256 as KeyInit>::new_from_slice(&secret).expect("HMAC accepts a key of any length");
    Ok(SigningKey {
        kid: kid.to_owned(),
        keyed,
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use score_shared::ValidationRules;

    use super::*;

    const KEY_A: &str = "a2V5LWEta2V5LWEta2V5LWEta2V5LWEta2V5LWEta2E="; // 32 bytes
    const KEY_B: &str = "a2V5LWIta2V5LWIta2V5LWIta2V5LWIta2V5LWIta2I=";
    const DAY: Duration = Duration::from_secs(24 * 60 * 60);

    fn tokens(setting: &str) -> ResultsTokens {
        ResultsTokens::parse(Some(setting), 30 * DAY).expect("valid keys")
    }

    fn account(number: &str) -> AccountNumber {
        AccountNumber::parse(number, &ValidationRules::default()).expect("a valid number")
    }

    #[test]
    fn the_test_keys_are_32_bytes() {
        assert_eq!(STANDARD.decode(KEY_A).unwrap().len(), 32);
        assert_eq!(STANDARD.decode(KEY_B).unwrap().len(), 32);
    }

    #[test]
    fn a_token_issued_for_an_account_reads_that_account() {
        let tokens = tokens(&format!("a:{KEY_A}"));
        let token = tokens.issue(&account("13800138000"));
        assert_eq!(tokens.verify(Some(&token), &account("13800138000")), Ok(()));
    }

    #[test]
    fn a_token_carries_no_phone_number_in_clear() {
        let tokens = tokens(&format!("a:{KEY_A}"));
        let token = tokens.issue(&account("13800138000"));
        let bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        assert!(!token.contains("13800138000"), "{token}");
        assert!(
            !bytes.windows(11).any(|window| window == b"13800138000"),
            "the decoded token holds the number"
        );
    }

    #[test]
    fn a_token_for_another_account_is_refused_like_a_forged_one() {
        let tokens = tokens(&format!("a:{KEY_A}"));
        let token = tokens.issue(&account("13800138000"));
        assert_eq!(
            tokens.verify(Some(&token), &account("13800138001")),
            Err(Refusal::BadSignature)
        );
    }

    #[test]
    fn an_expired_token_is_refused() {
        let tokens = tokens(&format!("a:{KEY_A}"));
        let number = account("13800138000");
        let token = tokens.issue_expiring_at(&number, 1_000);
        assert_eq!(tokens.verify_at(Some(&token), &number, 999), Ok(()));
        assert_eq!(
            tokens.verify_at(Some(&token), &number, 1_000),
            Err(Refusal::Expired)
        );
        assert_eq!(tokens.verify(Some(&token), &number), Err(Refusal::Expired));
    }

    #[test]
    fn a_token_lives_the_configured_lifetime() {
        let tokens = ResultsTokens::parse(Some(&format!("a:{KEY_A}")), DAY).unwrap();
        let number = account("13800138000");
        let now = unix_now();
        let token = tokens.issue(&number);
        assert_eq!(tokens.verify_at(Some(&token), &number, now + 60), Ok(()));
        assert_eq!(
            tokens.verify_at(Some(&token), &number, now + DAY.as_secs() + 60),
            Err(Refusal::Expired)
        );
    }

    #[test]
    fn a_token_with_any_byte_changed_is_refused() {
        let tokens = tokens(&format!("a:{KEY_A}"));
        let number = account("13800138000");
        let token = tokens.issue(&number);
        let bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        for index in 0..bytes.len() {
            let mut tampered = bytes.clone();
            tampered[index] ^= 0x01;
            let tampered = URL_SAFE_NO_PAD.encode(&tampered);
            assert!(
                tokens.verify(Some(&tampered), &number).is_err(),
                "byte {index} changed, still accepted"
            );
        }
        // The expiry pushed later, the MAC kept: refused by the MAC.
        let mut later = bytes.clone();
        later[2 + 1] = later[2 + 1].wrapping_add(1);
        assert_eq!(
            tokens.verify(Some(&URL_SAFE_NO_PAD.encode(&later)), &number),
            Err(Refusal::BadSignature)
        );
    }

    #[test]
    fn a_missing_or_malformed_token_is_refused() {
        let tokens = tokens(&format!("a:{KEY_A}"));
        let number = account("13800138000");
        let valid = tokens.issue(&number);
        let cases = [
            (None, Refusal::Missing),
            (Some(""), Refusal::Missing),
            (Some("not a token"), Refusal::Malformed),
            (Some("AAAA"), Refusal::Malformed),
            (Some(&valid[..valid.len() - 2]), Refusal::Malformed),
        ];
        for (token, refusal) in cases {
            assert_eq!(tokens.verify(token, &number), Err(refusal), "{token:?}");
        }
        let long = format!("{valid}{valid}");
        assert_eq!(tokens.verify(Some(&long), &number), Err(Refusal::Malformed));
    }

    #[test]
    fn a_token_signed_by_an_unknown_or_retired_key_is_refused() {
        let number = account("13800138000");
        let old = tokens(&format!("old:{KEY_A}"));
        let token = old.issue(&number);
        let rotated = tokens(&format!("new:{KEY_B}"));
        assert_eq!(
            rotated.verify(Some(&token), &number),
            Err(Refusal::UnknownKey),
            "the old key retired"
        );
        // The same id given to another key: the MAC tells them apart.
        let reused_id = tokens(&format!("old:{KEY_B}"));
        assert_eq!(
            reused_id.verify(Some(&token), &number),
            Err(Refusal::BadSignature)
        );
    }

    #[test]
    fn during_a_rotation_the_new_key_signs_and_both_verify() {
        let number = account("13800138000");
        let old = tokens(&format!("old:{KEY_A}"));
        let rotating = tokens(&format!("new:{KEY_B},old:{KEY_A}"));
        let old_token = old.issue(&number);
        let new_token = rotating.issue(&number);
        assert_eq!(rotating.verify(Some(&old_token), &number), Ok(()));
        assert_eq!(rotating.verify(Some(&new_token), &number), Ok(()));
        assert_eq!(
            old.verify(Some(&new_token), &number),
            Err(Refusal::UnknownKey),
            "the new key signs"
        );
    }

    #[test]
    fn the_key_setting_is_checked_entry_by_entry_without_echoing_a_key() {
        let short = STANDARD.encode([7u8; 31]);
        let cases: Vec<(Option<String>, KeysError)> = vec![
            (None, KeysError::Missing),
            (Some("  ".to_owned()), KeysError::Missing),
            (Some(KEY_A.to_owned()), KeysError::Entry { position: 1 }),
            (
                Some(format!("a:{KEY_A},:{KEY_B}")),
                KeysError::Entry { position: 2 },
            ),
            (
                Some(format!("a b:{KEY_A}")),
                KeysError::Entry { position: 1 },
            ),
            (
                Some(format!("{}:{KEY_A}", "k".repeat(17))),
                KeysError::Entry { position: 1 },
            ),
            (
                Some("a:***not base64***".to_owned()),
                KeysError::NotBase64 {
                    position: 1,
                    kid: "a".to_owned(),
                },
            ),
            (
                Some(format!("a:{short}")),
                KeysError::TooShort {
                    position: 1,
                    kid: "a".to_owned(),
                    bytes: 31,
                },
            ),
            (
                Some(format!("a:{KEY_A},a:{KEY_B}")),
                KeysError::DuplicateKid {
                    kid: "a".to_owned(),
                },
            ),
        ];
        for (setting, expected) in cases {
            let error = ResultsTokens::parse(setting.as_deref(), DAY).unwrap_err();
            assert_eq!(error, expected, "{setting:?}");
            let message = error.to_string();
            assert!(message.contains(KEYS_SETTING), "{message}");
            assert!(
                !message.contains(KEY_A) && !message.contains(&short),
                "the message echoes a key: {message}"
            );
        }
        assert_eq!(
            ResultsTokens::parse(Some(&format!("a:{KEY_A}")), Duration::ZERO).unwrap_err(),
            KeysError::ZeroLifetime
        );
    }

    #[test]
    fn the_mac_is_compared_in_constant_time_by_verify_slice_never_with_eq() {
        // Timing cannot be asserted reliably in a test; what can be is that
        // the comparison is the constant-time one of the `digest` crate.
        let source = include_str!("read_token.rs");
        let verify = source
            .split("pub fn verify_at(")
            .nth(1)
            .and_then(|rest| rest.split("\nstruct Parts").next())
            .expect("verify_at in the source");
        assert!(verify.contains(".verify_slice(parts.tag)"), "{verify}");
        for comparison in [
            "== parts.tag",
            "parts.tag ==",
            "!= parts.tag",
            "parts.tag !=",
        ] {
            assert!(!verify.contains(comparison), "{comparison} in verify_at");
        }
    }

    #[test]
    fn a_missing_key_is_explained_with_how_to_make_one() {
        let message = KeysError::Missing.to_string();
        assert!(message.contains("SCORES_RESULTS_TOKEN_KEYS"), "{message}");
        assert!(
            message.contains("head -c 32 /dev/urandom | base64"),
            "{message}"
        );
    }

    #[test]
    fn keys_in_url_safe_or_unpadded_base64_are_accepted_and_never_shown_by_debug() {
        let unpadded = KEY_A.trim_end_matches('=');
        let tokens = tokens(&format!(" a : {unpadded} "));
        let debug = format!("{tokens:?}");
        assert!(debug.contains("\"a\""), "{debug}");
        assert!(!debug.contains(unpadded), "{debug}");
    }
}
