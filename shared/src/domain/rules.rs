use regex::Regex;

/// The default account number pattern: a phone number, optionally with a
/// leading `+`, 5 to 20 digits.
pub const DEFAULT_ACCOUNT_PATTERN: &str = r"^\+?[0-9]{5,20}$";
/// Grades are integers in `1..=5` unless configured otherwise.
pub const DEFAULT_GRADE_MIN: i32 = 1;
/// See [`DEFAULT_GRADE_MIN`].
pub const DEFAULT_GRADE_MAX: i32 = 5;
/// Each comment holds at most this many characters (Unicode scalar values).
pub const DEFAULT_TEXT_MAX_CHARS: usize = 500;
/// The `grade.acc_nbr` column is `VARCHAR(64)`: no pattern may admit more.
pub const ACCOUNT_MAX_BYTES: usize = 64;

/// The configurable rules every submission is checked against, by the ingest
/// API before it appends an event and by the projector before it writes one.
#[derive(Clone, Debug)]
pub struct ValidationRules {
    pub(crate) account_pattern: Regex,
    pub(crate) grade_min: i32,
    pub(crate) grade_max: i32,
    pub(crate) text_max_chars: usize,
}

/// A rule set that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("account number pattern is not a valid regular expression: {0}")]
    Pattern(#[from] regex::Error),
    #[error("grade range is empty: minimum {min} is above maximum {max}")]
    EmptyGradeRange { min: i32, max: i32 },
}

impl ValidationRules {
    /// Builds a rule set.
    ///
    /// # Errors
    ///
    /// Fails when the pattern does not compile or `grade_min > grade_max`.
    pub fn new(
        account_pattern: &str,
        grade_min: i32,
        grade_max: i32,
        text_max_chars: usize,
    ) -> Result<Self, RulesError> {
        if grade_min > grade_max {
            return Err(RulesError::EmptyGradeRange {
                min: grade_min,
                max: grade_max,
            });
        }
        Ok(Self {
            account_pattern: Regex::new(account_pattern)?,
            grade_min,
            grade_max,
            text_max_chars,
        })
    }

    /// The pattern account numbers must match.
    pub fn account_pattern(&self) -> &str {
        self.account_pattern.as_str()
    }

    /// The inclusive grade range.
    pub fn grade_range(&self) -> std::ops::RangeInclusive<i32> {
        self.grade_min..=self.grade_max
    }

    /// The maximum number of characters in one comment.
    pub fn text_max_chars(&self) -> usize {
        self.text_max_chars
    }
}

impl Default for ValidationRules {
    fn default() -> Self {
        Self::new(
            DEFAULT_ACCOUNT_PATTERN,
            DEFAULT_GRADE_MIN,
            DEFAULT_GRADE_MAX,
            DEFAULT_TEXT_MAX_CHARS,
        )
        .expect("the default rules are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_grade_range_is_refused() {
        let result = ValidationRules::new(DEFAULT_ACCOUNT_PATTERN, 5, 1, 10);
        assert!(matches!(result, Err(RulesError::EmptyGradeRange { .. })));
    }

    #[test]
    fn an_invalid_pattern_is_refused() {
        let result = ValidationRules::new("([0-9]", 1, 5, 10);
        assert!(matches!(result, Err(RulesError::Pattern(_))));
    }
}
