//! From what a client sent to a validated [`Submission`].
//!
//! Wire formats differ (the legacy form with `JSON.stringify`'d values, a
//! JSON object, an event read back from the log) but all of them end up as a
//! [`RawSubmission`] of JSON values, and [`Submission::parse`] is the single
//! place where those values are checked.

use serde_json::Value;

use crate::domain::{AccountNumber, CommentText, Grade, Scene, ValidationRules};

/// The field names of a submission, as the mini-program sends them and as the
/// `grade` table names its columns.
pub const FIELD_NAMES: [&str; 8] = [
    "acc_nbr", "grade1", "grade2", "grade3", "txt1", "txt2", "txt3", "scene",
];

/// The fields of a submission as received, each as a JSON value (a string,
/// a number, or anything else a client may have sent), `None` when absent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RawSubmission {
    pub acc_nbr: Option<Value>,
    pub grades: [Option<Value>; 3],
    pub texts: [Option<Value>; 3],
    /// Optional since event version 2.
    pub scene: Option<Value>,
}

impl RawSubmission {
    /// The slot for a field name, or `None` for a name that is not one of
    /// [`FIELD_NAMES`].
    pub fn slot_mut(&mut self, field: &str) -> Option<&mut Option<Value>> {
        match field {
            "acc_nbr" => Some(&mut self.acc_nbr),
            "grade1" => Some(&mut self.grades[0]),
            "grade2" => Some(&mut self.grades[1]),
            "grade3" => Some(&mut self.grades[2]),
            "txt1" => Some(&mut self.texts[0]),
            "txt2" => Some(&mut self.texts[1]),
            "txt3" => Some(&mut self.texts[2]),
            "scene" => Some(&mut self.scene),
            _ => None,
        }
    }
}

/// A submission whose every field passed its rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submission {
    pub account: AccountNumber,
    pub grades: [Grade; 3],
    pub texts: [CommentText; 3],
    pub scene: Option<Scene>,
}

/// One field that broke a rule, named as the client named it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

/// Every field that broke a rule (never empty).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid submission: {}", summary(.0))]
pub struct ValidationErrors(pub Vec<FieldError>);

fn summary(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("{} {}", e.field, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

const REQUIRED: &str = "is required";

impl Submission {
    /// Validates every field of `raw`, collecting all errors rather than
    /// stopping at the first, so a client can fix them in one go.
    ///
    /// Accepted shapes: the account number as a string, or as a non-negative
    /// integer (the legacy page may hold it as a number); grades as integers
    /// or strings holding an integer; comments as strings (a number is taken
    /// as its text), absent comments as empty.
    ///
    /// # Errors
    ///
    /// [`ValidationErrors`] naming each field that broke a rule.
    pub fn parse(raw: &RawSubmission, rules: &ValidationRules) -> Result<Self, ValidationErrors> {
        let mut errors = Vec::new();
        let mut fail = |field: &'static str, message: String| {
            errors.push(FieldError { field, message });
        };

        let account = match &raw.acc_nbr {
            None | Some(Value::Null) => {
                fail("acc_nbr", REQUIRED.into());
                None
            }
            Some(value) => {
                let text = match value {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) if n.is_u64() => Some(n.to_string()),
                    _ => None,
                };
                let parsed = match text {
                    Some(text) => AccountNumber::parse(&text, rules),
                    None => Err(crate::domain::AccountNumberError::Pattern {
                        pattern: rules.account_pattern().to_owned(),
                    }),
                };
                parsed.map_err(|e| fail("acc_nbr", e.to_string())).ok()
            }
        };

        let mut grades = [None; 3];
        for (index, value) in raw.grades.iter().enumerate() {
            let field = FIELD_NAMES[1 + index];
            grades[index] = match value {
                None | Some(Value::Null) => {
                    fail(field, REQUIRED.into());
                    None
                }
                Some(value) => {
                    let integer = match value {
                        Value::Number(n) => n.as_i64(),
                        Value::String(s) => s.parse::<i64>().ok(),
                        _ => None,
                    };
                    // A non-integer reports the same sentence as an
                    // out-of-range one: "must be an integer from 1 to 5".
                    let integer = integer.unwrap_or(i64::MIN);
                    Grade::parse(integer, rules)
                        .map_err(|e| fail(field, e.to_string()))
                        .ok()
                }
            };
        }

        let mut texts: [Option<CommentText>; 3] = [None, None, None];
        for (index, value) in raw.texts.iter().enumerate() {
            let field = FIELD_NAMES[4 + index];
            let text = match value {
                None => Some(String::new()),
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                Some(_) => None,
            };
            texts[index] = match text {
                Some(text) => CommentText::parse(text, rules)
                    .map_err(|e| fail(field, e.to_string()))
                    .ok(),
                None => {
                    fail(field, "must be a string".into());
                    None
                }
            };
        }

        // An absent, null or empty scene is no scene.
        let scene = match &raw.scene {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Scene::parse(s.clone())
                .map_err(|e| fail("scene", e.to_string()))
                .ok(),
            Some(_) => {
                fail("scene", "must be a string".into());
                None
            }
        };

        match (account, grades, texts) {
            (Some(account), [Some(g1), Some(g2), Some(g3)], [Some(t1), Some(t2), Some(t3)])
                if errors.is_empty() =>
            {
                Ok(Self {
                    account,
                    grades: [g1, g2, g3],
                    texts: [t1, t2, t3],
                    scene,
                })
            }
            _ => Err(ValidationErrors(errors)),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn valid() -> RawSubmission {
        RawSubmission {
            acc_nbr: Some(json!("13800138000")),
            grades: [Some(json!(5)), Some(json!("4")), Some(json!(3))],
            texts: [Some(json!("服務很好")), Some(json!("")), None],
            scene: None,
        }
    }

    fn fields(result: Result<Submission, ValidationErrors>) -> Vec<&'static str> {
        result.unwrap_err().0.iter().map(|e| e.field).collect()
    }

    #[test]
    fn a_complete_submission_is_accepted() {
        let submission = Submission::parse(&valid(), &ValidationRules::default()).unwrap();
        assert_eq!(submission.account.as_str(), "13800138000");
        assert_eq!(submission.grades.map(Grade::value), [5, 4, 3]);
        assert_eq!(submission.texts[0].as_str(), "服務很好");
        assert_eq!(
            submission.texts[2].as_str(),
            "",
            "an absent comment is empty"
        );
    }

    #[test]
    fn a_numeric_account_number_is_accepted() {
        let mut raw = valid();
        raw.acc_nbr = Some(json!(13800138000_u64));
        let submission = Submission::parse(&raw, &ValidationRules::default()).unwrap();
        assert_eq!(submission.account.as_str(), "13800138000");
    }

    #[test]
    fn a_missing_account_number_is_reported() {
        let mut raw = valid();
        raw.acc_nbr = None;
        assert_eq!(
            fields(Submission::parse(&raw, &ValidationRules::default())),
            ["acc_nbr"]
        );
    }

    #[test]
    fn a_missing_grade_is_reported() {
        let mut raw = valid();
        raw.grades[1] = None;
        assert_eq!(
            fields(Submission::parse(&raw, &ValidationRules::default())),
            ["grade2"]
        );
    }

    #[test]
    fn a_fractional_grade_is_rejected() {
        let mut raw = valid();
        raw.grades[0] = Some(json!(4.5));
        assert_eq!(
            fields(Submission::parse(&raw, &ValidationRules::default())),
            ["grade1"]
        );
    }

    #[test]
    fn a_grade_string_that_is_not_an_integer_is_rejected() {
        let mut raw = valid();
        raw.grades[2] = Some(json!("five"));
        assert_eq!(
            fields(Submission::parse(&raw, &ValidationRules::default())),
            ["grade3"]
        );
    }

    #[test]
    fn a_comment_that_is_not_a_string_is_rejected() {
        let mut raw = valid();
        raw.texts[1] = Some(json!(["a"]));
        assert_eq!(
            fields(Submission::parse(&raw, &ValidationRules::default())),
            ["txt2"]
        );
    }

    #[test]
    fn every_broken_field_is_reported_at_once() {
        let raw = RawSubmission {
            acc_nbr: Some(json!("abc")),
            grades: [Some(json!(0)), Some(json!(6)), None],
            texts: [Some(json!("\0")), None, Some(json!(true))],
            scene: Some(json!(7)),
        };
        assert_eq!(
            fields(Submission::parse(&raw, &ValidationRules::default())),
            [
                "acc_nbr", "grade1", "grade2", "grade3", "txt1", "txt3", "scene"
            ]
        );
    }

    #[test]
    fn an_empty_scene_is_no_scene() {
        let mut raw = valid();
        raw.scene = Some(json!(""));
        let submission = Submission::parse(&raw, &ValidationRules::default()).unwrap();
        assert_eq!(submission.scene, None);
    }

    #[test]
    fn a_scene_is_kept() {
        let mut raw = valid();
        raw.scene = Some(json!("pages/score/score"));
        let submission = Submission::parse(&raw, &ValidationRules::default()).unwrap();
        assert_eq!(submission.scene.unwrap().as_str(), "pages/score/score");
    }

    #[test]
    fn unknown_field_names_have_no_slot() {
        let mut raw = RawSubmission::default();
        assert!(raw.slot_mut("grade4").is_none());
        for name in FIELD_NAMES {
            assert!(raw.slot_mut(name).is_some(), "{name}");
        }
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;

    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            any::<String>().prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map(any::<String>(), inner, 0..4)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_values_either_validate_or_name_the_fields_they_break(
            acc_nbr in prop::option::of(any_json()),
            grades in prop::array::uniform3(prop::option::of(any_json())),
            texts in prop::array::uniform3(prop::option::of(any_json())),
            scene in prop::option::of(any_json()),
        ) {
            let raw = RawSubmission { acc_nbr, grades, texts, scene };
            match Submission::parse(&raw, &ValidationRules::default()) {
                Ok(submission) => prop_assert!((1..=5).contains(&submission.grades[0].value())),
                Err(errors) => {
                    prop_assert!(!errors.0.is_empty());
                    for error in &errors.0 {
                        prop_assert!(FIELD_NAMES.contains(&error.field));
                    }
                }
            }
        }
    }
}
