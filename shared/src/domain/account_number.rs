use std::fmt;

use super::ValidationRules;
use super::rules::ACCOUNT_MAX_BYTES;

/// An account number (a phone number) that matched the configured pattern.
///
/// Its `Debug` and `Display` forms are masked so that a stray `{:?}` in a
/// log line cannot leak it; use [`AccountNumber::as_str`] where the full
/// number is really needed (the event, the Kafka key, SQL parameters).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AccountNumber(String);

/// Why an account number was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountNumberError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} bytes long")]
    TooLong { max: usize },
    #[error("must be a phone number matching {pattern}")]
    Pattern { pattern: String },
}

impl AccountNumber {
    /// Checks `raw` against the rules.
    ///
    /// # Errors
    ///
    /// Returns which rule the value broke.
    pub fn parse(raw: &str, rules: &ValidationRules) -> Result<Self, AccountNumberError> {
        if raw.is_empty() {
            return Err(AccountNumberError::Empty);
        }
        if raw.len() > ACCOUNT_MAX_BYTES {
            return Err(AccountNumberError::TooLong {
                max: ACCOUNT_MAX_BYTES,
            });
        }
        if !rules.account_pattern.is_match(raw) {
            return Err(AccountNumberError::Pattern {
                pattern: rules.account_pattern.as_str().to_owned(),
            });
        }
        Ok(Self(raw.to_owned()))
    }

    /// The full account number.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::privacy::masked(&self.0))
    }
}

impl fmt::Debug for AccountNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountNumber({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<AccountNumber, AccountNumberError> {
        AccountNumber::parse(raw, &ValidationRules::default())
    }

    #[test]
    fn a_mainland_mobile_number_is_accepted() {
        assert_eq!(parse("13800138000").unwrap().as_str(), "13800138000");
    }

    #[test]
    fn a_leading_plus_is_accepted() {
        assert_eq!(parse("+8613800138000").unwrap().as_str(), "+8613800138000");
    }

    #[test]
    fn an_empty_account_number_is_rejected() {
        assert_eq!(parse(""), Err(AccountNumberError::Empty));
    }

    #[test]
    fn fewer_than_five_digits_are_rejected() {
        assert!(matches!(
            parse("1234"),
            Err(AccountNumberError::Pattern { .. })
        ));
    }

    #[test]
    fn more_than_twenty_digits_are_rejected() {
        assert!(matches!(
            parse("123456789012345678901"),
            Err(AccountNumberError::Pattern { .. })
        ));
    }

    #[test]
    fn letters_and_spaces_are_rejected() {
        for raw in [
            "1380013800a",
            " 13800138000",
            "138 0013 8000",
            "13800138000\n",
        ] {
            assert!(parse(raw).is_err(), "{raw:?} should be rejected");
        }
    }

    #[test]
    fn a_pattern_cannot_admit_more_than_the_column_holds() {
        let rules = ValidationRules::new("^[0-9]+$", 1, 5, 10).unwrap();
        let long = "1".repeat(65);
        assert_eq!(
            AccountNumber::parse(&long, &rules),
            Err(AccountNumberError::TooLong { max: 64 })
        );
    }

    #[test]
    fn a_configured_pattern_replaces_the_default() {
        let rules = ValidationRules::new("^[0-9]{3}$", 1, 5, 10).unwrap();
        assert!(AccountNumber::parse("123", &rules).is_ok());
        assert!(AccountNumber::parse("13800138000", &rules).is_err());
    }

    #[test]
    fn debug_output_masks_the_number() {
        let account = parse("13800138000").unwrap();
        let shown = format!("{account:?} {account}");
        assert!(!shown.contains("13800138000"), "{shown}");
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn any_plus_and_five_to_twenty_digits_is_accepted(number in r"\+?[0-9]{5,20}") {
            let account = AccountNumber::parse(&number, &ValidationRules::default()).unwrap();
            prop_assert_eq!(account.as_str(), number.as_str());
        }

        #[test]
        fn anything_else_is_rejected(raw in any::<String>()) {
            let well_formed = regex::Regex::new(r"^\+?[0-9]{5,20}$").unwrap().is_match(&raw);
            prop_assert_eq!(AccountNumber::parse(&raw, &ValidationRules::default()).is_ok(), well_formed);
        }
    }
}
