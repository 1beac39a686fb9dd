use super::ValidationRules;

/// A grade inside the configured range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grade(i32);

/// Why a grade was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GradeError {
    #[error("must be an integer from {min} to {max}")]
    OutOfRange { min: i32, max: i32 },
}

impl Grade {
    /// Checks `value` against the configured range.
    ///
    /// # Errors
    ///
    /// [`GradeError::OutOfRange`] when the value lies outside it.
    pub fn parse(value: i64, rules: &ValidationRules) -> Result<Self, GradeError> {
        let in_range = i32::try_from(value)
            .ok()
            .filter(|value| rules.grade_range().contains(value));
        in_range.map(Self).ok_or(GradeError::OutOfRange {
            min: rules.grade_min,
            max: rules.grade_max,
        })
    }

    /// The grade as a number.
    pub fn value(self) -> i32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: i64) -> Result<Grade, GradeError> {
        Grade::parse(value, &ValidationRules::default())
    }

    #[test]
    fn every_grade_in_the_default_range_is_accepted() {
        for value in 1..=5 {
            assert_eq!(parse(value).unwrap().value(), value as i32);
        }
    }

    #[test]
    fn a_grade_below_the_minimum_is_rejected() {
        assert_eq!(parse(0), Err(GradeError::OutOfRange { min: 1, max: 5 }));
        assert!(parse(-3).is_err());
    }

    #[test]
    fn a_grade_above_the_maximum_is_rejected() {
        assert_eq!(parse(6), Err(GradeError::OutOfRange { min: 1, max: 5 }));
    }

    #[test]
    fn a_grade_that_overflows_an_i32_is_rejected() {
        assert!(parse(i64::from(i32::MAX) + 1).is_err());
        assert!(parse(i64::MIN).is_err());
    }

    #[test]
    fn a_configured_range_replaces_the_default() {
        let rules = ValidationRules::new(r"^[0-9]+$", 0, 10, 10).unwrap();
        assert!(Grade::parse(0, &rules).is_ok());
        assert!(Grade::parse(10, &rules).is_ok());
        assert!(Grade::parse(11, &rules).is_err());
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn a_grade_is_accepted_exactly_inside_the_range(value in any::<i64>(), low in -10_i32..10, span in 0_i32..20) {
            let rules = ValidationRules::new(r"^[0-9]+$", low, low + span, 10).unwrap();
            let inside = value >= i64::from(low) && value <= i64::from(low + span);
            prop_assert_eq!(Grade::parse(value, &rules).is_ok(), inside);
        }
    }
}
