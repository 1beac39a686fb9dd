//! The digest of a submission's content: what an `Idempotency-Key` means.
//!
//! A client that retries sends the same key with the same rating; a key
//! reused for a different rating is a conflict, and the first write wins.
//! Telling the two apart needs a fingerprint of the content that is the same
//! for an honest retry, so it covers exactly what the person rated (account,
//! grades, comments, scene) and nothing the transport adds (`occurred_at`,
//! `channel`, `request_id`, the event id): a retry through the other door,
//! or a second later, is still the same submission.
//!
//! The digest is SHA-256 over a canonical encoding that is unambiguous
//! without any escaping: a version line, then every field as its name, its
//! length in bytes and its bytes. An absent scene and an empty one differ.
//! The encoding is versioned in its first line so that a later change gives
//! other digests instead of silently colliding with these.

use std::fmt;

use sha2::{Digest as _, Sha256};

/// The first line of the canonical encoding.
const ENCODING_VERSION: &[u8] = b"score-submission-digest/1\n";

/// The content a digest covers, borrowed from wherever it lives (an event,
/// a stored row).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubmissionContent<'a> {
    pub acc_nbr: &'a str,
    pub grades: [i32; 3],
    pub texts: [&'a str; 3],
    pub scene: Option<&'a str>,
}

/// SHA-256 of a submission's canonical encoding; written as 64 lowercase
/// hexadecimal digits in events and tables.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubmissionDigest([u8; 32]);

/// Text that is not a digest.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("submission digest must be 64 lowercase hexadecimal digits")]
pub struct InvalidDigest;

impl SubmissionDigest {
    /// The digest of `content`.
    pub fn of(content: &SubmissionContent<'_>) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(ENCODING_VERSION);
        let mut field = |name: &str, value: Option<&[u8]>| {
            hasher.update(name.as_bytes());
            match value {
                // `-` cannot be mistaken for a length.
                None => hasher.update(b"=-\n"),
                Some(bytes) => {
                    hasher.update(format!("={}:", bytes.len()).as_bytes());
                    hasher.update(bytes);
                    hasher.update(b"\n");
                }
            }
        };
        field("acc_nbr", Some(content.acc_nbr.as_bytes()));
        for (name, grade) in ["grade1", "grade2", "grade3"]
            .into_iter()
            .zip(content.grades)
        {
            field(name, Some(grade.to_string().as_bytes()));
        }
        for (name, text) in ["txt1", "txt2", "txt3"].into_iter().zip(content.texts) {
            field(name, Some(text.as_bytes()));
        }
        field("scene", content.scene.map(str::as_bytes));
        Self(hasher.finalize().into())
    }

    /// Reads the hexadecimal form.
    ///
    /// # Errors
    ///
    /// [`InvalidDigest`] unless `text` is 64 lowercase hexadecimal digits.
    pub fn parse(text: &str) -> Result<Self, InvalidDigest> {
        let hex = text.as_bytes();
        if hex.len() != 64 {
            return Err(InvalidDigest);
        }
        let nibble = |digit: u8| match digit {
            b'0'..=b'9' => Ok(digit - b'0'),
            b'a'..=b'f' => Ok(digit - b'a' + 10),
            _ => Err(InvalidDigest),
        };
        let mut bytes = [0_u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(hex.chunks_exact(2)) {
            *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
        }
        Ok(Self(bytes))
    }
}

impl fmt::Display for SubmissionDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One hex encoding rather than 32 formatted bytes: the projector
        // writes a digest per row.
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for SubmissionDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SubmissionDigest({self})")
    }
}

impl serde::Serialize for SubmissionDigest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SubmissionDigest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content() -> SubmissionContent<'static> {
        SubmissionContent {
            acc_nbr: "13800138000",
            grades: [5, 4, 3],
            texts: ["服務很好 👍", "", "'); DROP TABLE grade; --"],
            scene: Some("pages/score/score"),
        }
    }

    #[test]
    fn the_digest_of_the_same_content_never_changes() {
        // Pinned (and checked once against Python's hashlib over the same
        // bytes): events in the log and rows in MySQL carry digests of this
        // encoding, so changing it would turn every retry of them into a
        // conflict.
        assert_eq!(
            SubmissionDigest::of(&content()).to_string(),
            "4807e5a84a28a35aadbd1ff5087ea35088430ed5af495fdbc7c71651048cc472",
        );
    }

    #[test]
    fn every_field_of_the_content_changes_the_digest() {
        let original = SubmissionDigest::of(&content());
        let changes: [(&str, SubmissionContent<'static>); 9] = [
            (
                "acc_nbr",
                SubmissionContent {
                    acc_nbr: "13800138001",
                    ..content()
                },
            ),
            (
                "grade1",
                SubmissionContent {
                    grades: [4, 4, 3],
                    ..content()
                },
            ),
            (
                "grade2",
                SubmissionContent {
                    grades: [5, 5, 3],
                    ..content()
                },
            ),
            (
                "grade3",
                SubmissionContent {
                    grades: [5, 4, 4],
                    ..content()
                },
            ),
            (
                "txt1",
                SubmissionContent {
                    texts: ["服務很好", "", "'); DROP TABLE grade; --"],
                    ..content()
                },
            ),
            (
                "txt2",
                SubmissionContent {
                    texts: ["服務很好 👍", " ", "'); DROP TABLE grade; --"],
                    ..content()
                },
            ),
            (
                "txt3",
                SubmissionContent {
                    texts: ["服務很好 👍", "", ""],
                    ..content()
                },
            ),
            (
                "scene",
                SubmissionContent {
                    scene: Some("pages/index/index"),
                    ..content()
                },
            ),
            (
                "no scene",
                SubmissionContent {
                    scene: None,
                    ..content()
                },
            ),
        ];
        for (case, changed) in changes {
            assert_ne!(SubmissionDigest::of(&changed), original, "{case}");
        }
    }

    #[test]
    fn text_moved_between_fields_changes_the_digest() {
        let a = SubmissionContent {
            texts: ["ab", "", ""],
            ..content()
        };
        let b = SubmissionContent {
            texts: ["a", "b", ""],
            ..content()
        };
        assert_ne!(SubmissionDigest::of(&a), SubmissionDigest::of(&b));
    }

    #[test]
    fn an_empty_scene_and_no_scene_differ() {
        let empty = SubmissionContent {
            scene: Some(""),
            ..content()
        };
        let absent = SubmissionContent {
            scene: None,
            ..content()
        };
        assert_ne!(SubmissionDigest::of(&empty), SubmissionDigest::of(&absent));
    }

    #[test]
    fn a_digest_reads_back_from_its_text() {
        let digest = SubmissionDigest::of(&content());
        let text = digest.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(SubmissionDigest::parse(&text), Ok(digest));
    }

    #[test]
    fn text_that_is_not_a_digest_is_refused() {
        let upper = SubmissionDigest::of(&content()).to_string().to_uppercase();
        for text in [
            "",
            "abc",
            &"g".repeat(64),
            &"0".repeat(63),
            &"0".repeat(65),
            &upper,
        ] {
            assert_eq!(
                SubmissionDigest::parse(text),
                Err(InvalidDigest),
                "{text:?}"
            );
        }
    }
}
