use super::ValidationRules;

/// A free-text comment: at most the configured number of characters, no
/// control characters except tab and newline. Empty is allowed. The text is
/// kept byte for byte as received (no trimming, no normalization).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommentText(String);

/// Why a comment was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommentTextError {
    #[error("must be at most {max} characters long, got {actual}")]
    TooLong { max: usize, actual: usize },
    #[error(
        "must not contain control characters (found U+{codepoint:04X} at character {position})"
    )]
    ControlCharacter { codepoint: u32, position: usize },
}

impl CommentText {
    /// Checks `raw` against the rules.
    ///
    /// # Errors
    ///
    /// Returns the first rule the text broke.
    pub fn parse(raw: String, rules: &ValidationRules) -> Result<Self, CommentTextError> {
        let actual = raw.chars().count();
        if actual > rules.text_max_chars {
            return Err(CommentTextError::TooLong {
                max: rules.text_max_chars,
                actual,
            });
        }
        let forbidden = raw
            .chars()
            .enumerate()
            .find(|(_, c)| c.is_control() && *c != '\t' && *c != '\n');
        if let Some((position, c)) = forbidden {
            return Err(CommentTextError::ControlCharacter {
                codepoint: u32::from(c),
                position,
            });
        }
        Ok(Self(raw))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Gives the text back.
    pub fn into_inner(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<CommentText, CommentTextError> {
        CommentText::parse(raw.to_owned(), &ValidationRules::default())
    }

    #[test]
    fn an_empty_comment_is_accepted() {
        assert_eq!(parse("").unwrap().as_str(), "");
    }

    #[test]
    fn chinese_text_and_emoji_are_kept_byte_for_byte() {
        let text = "服務很好 👍🏽 家庭👨‍👩‍👧 e\u{301}";
        assert_eq!(parse(text).unwrap().as_str().as_bytes(), text.as_bytes());
    }

    #[test]
    fn tab_and_newline_are_accepted() {
        assert!(parse("line one\n\tline two").is_ok());
    }

    #[test]
    fn exactly_the_maximum_number_of_characters_is_accepted() {
        assert!(parse(&"好".repeat(500)).is_ok());
    }

    #[test]
    fn a_comment_over_the_maximum_is_rejected_counting_characters_not_bytes() {
        assert_eq!(
            parse(&"好".repeat(501)),
            Err(CommentTextError::TooLong {
                max: 500,
                actual: 501
            })
        );
    }

    #[test]
    fn a_nul_character_is_rejected() {
        assert_eq!(
            parse("ab\0c"),
            Err(CommentTextError::ControlCharacter {
                codepoint: 0,
                position: 2
            })
        );
    }

    #[test]
    fn other_control_characters_are_rejected() {
        for raw in ["\r", "\u{1b}[31m", "\u{7f}", "\u{85}", "\u{8}"] {
            assert!(
                matches!(parse(raw), Err(CommentTextError::ControlCharacter { .. })),
                "{raw:?} should be rejected"
            );
        }
    }

    #[test]
    fn a_configured_maximum_replaces_the_default() {
        let rules = ValidationRules::new(r"^[0-9]+$", 1, 5, 3).unwrap();
        assert!(CommentText::parse("abc".into(), &rules).is_ok());
        assert!(CommentText::parse("abcd".into(), &rules).is_err());
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn a_comment_is_accepted_exactly_when_short_enough_and_free_of_control_characters(raw in any::<String>()) {
            let rules = ValidationRules::default();
            let allowed = raw.chars().count() <= rules.text_max_chars()
                && raw.chars().all(|c| !c.is_control() || c == '\t' || c == '\n');
            match CommentText::parse(raw.clone(), &rules) {
                Ok(text) => {
                    prop_assert!(allowed);
                    prop_assert_eq!(text.as_str().as_bytes(), raw.as_bytes());
                }
                Err(_) => prop_assert!(!allowed),
            }
        }
    }
}
