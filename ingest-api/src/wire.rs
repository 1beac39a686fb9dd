//! Request bodies to [`RawSubmission`]s.
//!
//! Three shapes arrive:
//! - the mini-program's legacy form: `application/x-www-form-urlencoded`
//!   whose values went through `JSON.stringify` (`acc_nbr=%2213800138000%22`,
//!   `grade1=5`); a value that is not JSON is taken as the raw string;
//! - the same fields as a JSON object on `/score`, string values unwrapped
//!   the same way, since the page stringifies them too;
//! - a plain JSON object on `/v1/scores`, taken as it is.
//!
//! Decoding is strict where leniency would lose data silently: invalid UTF-8,
//! a broken percent escape, a field given twice, or a value that begins with
//! `"` but is no valid JSON string (what `JSON.stringify` makes of a lone
//! surrogate, say) is an error, never a guess. Checking the values is not done here but in
//! [`score_shared::Submission::parse`].

use std::fmt;

use score_shared::{FIELD_NAMES, FieldError, RawSubmission};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::Value;

/// Why a body could not be read as a submission.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("form body is not valid: {0}")]
    Form(&'static str),
    #[error("field {0:?} is given more than once")]
    DuplicateField(String),
    #[error("unknown field {field:?}, expected one of {}", FIELD_NAMES.join(", "))]
    UnknownField { field: String },
    #[error("body is not a valid JSON object: {0}")]
    Json(String),
    /// A value that is there but cannot be read, named so that the client
    /// can point at the field.
    #[error("{} {}", .0.field, .0.message)]
    Value(FieldError),
}

/// Decodes the mini-program's form body. Unknown fields are ignored, as the
/// original service did.
///
/// # Errors
///
/// [`WireError`] for malformed encoding or a duplicated field.
pub fn legacy_form(body: &[u8]) -> Result<RawSubmission, WireError> {
    let mut raw = RawSubmission::default();
    for pair in body.split(|b| *b == b'&').filter(|pair| !pair.is_empty()) {
        let (name, value) = match pair.iter().position(|b| *b == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &b""[..]),
        };
        let name = form_component(name)?;
        let value = form_component(value)?;
        if let Some(slot) = raw.slot_mut(&name) {
            if slot.is_some() {
                return Err(WireError::DuplicateField(name));
            }
            *slot = Some(unstringify(&name, value)?);
        }
    }
    Ok(raw)
}

/// Decodes a JSON object body sent to `/score`. String values that hold a
/// `JSON.stringify`'d string or number are unwrapped. Unknown fields are
/// ignored, like in the form.
///
/// # Errors
///
/// [`WireError`] when the body is not a JSON object or repeats a field.
pub fn legacy_json(body: &[u8]) -> Result<RawSubmission, WireError> {
    fields_to_raw(
        json_object(body)?,
        Unknown::Ignore,
        |name, value| match value {
            Value::String(text) => unstringify(name, text),
            other => Ok(other),
        },
    )
}

/// Decodes a `/v1/scores` JSON object: plain JSON values, no unwrapping, and
/// an unknown field is an error so that a typo cannot drop a value.
///
/// # Errors
///
/// [`WireError`] when the body is not a JSON object, repeats a field or has
/// one not in [`FIELD_NAMES`].
pub fn v1_json(body: &[u8]) -> Result<RawSubmission, WireError> {
    fields_to_raw(json_object(body)?, Unknown::Reject, |_, value| Ok(value))
}

enum Unknown {
    Ignore,
    Reject,
}

fn fields_to_raw(
    fields: Vec<(String, Value)>,
    unknown: Unknown,
    convert: impl Fn(&str, Value) -> Result<Value, WireError>,
) -> Result<RawSubmission, WireError> {
    let mut raw = RawSubmission::default();
    for (name, value) in fields {
        match raw.slot_mut(&name) {
            Some(slot) if slot.is_some() => return Err(WireError::DuplicateField(name)),
            Some(slot) => *slot = Some(convert(&name, value)?),
            None => match unknown {
                Unknown::Ignore => {}
                Unknown::Reject => return Err(WireError::UnknownField { field: name }),
            },
        }
    }
    Ok(raw)
}

/// What `json.loads` in the original handler did, made total: a value that
/// parses as a JSON string or number is unwrapped, other text (not JSON at
/// all, or other JSON) is kept as the raw string. A value that begins with
/// `"` is a stringified string and must be a valid one: kept raw, its
/// quotes and escapes would be stored as text.
///
/// # Errors
///
/// [`WireError::Value`] naming `field` when a quoted value is no valid
/// JSON string (a lone surrogate escape, a missing closing quote, …).
fn unstringify(field: &str, text: String) -> Result<Value, WireError> {
    match serde_json::from_str::<Value>(&text) {
        Ok(value @ (Value::String(_) | Value::Number(_))) => Ok(value),
        _ if text.starts_with('"') => Err(WireError::Value(FieldError {
            field: FIELD_NAMES
                .into_iter()
                .find(|known| *known == field)
                .unwrap_or("body"),
            message: "begins with a quote but is not a valid JSON string".to_owned(),
        })),
        _ => Ok(Value::String(text)),
    }
}

/// Decodes one `application/x-www-form-urlencoded` component strictly:
/// `+` is a space, `%XX` a byte, and the result must be UTF-8. The usual
/// decoders replace invalid UTF-8 and keep broken escapes as they are; here
/// either one is an error, because a silently altered comment is data lost.
fn form_component(encoded: &[u8]) -> Result<String, WireError> {
    let mut bytes = Vec::with_capacity(encoded.len());
    let mut rest = encoded.iter();
    while let Some(&byte) = rest.next() {
        match byte {
            b'+' => bytes.push(b' '),
            b'%' => {
                let high = rest.next().and_then(|b| (*b as char).to_digit(16));
                let low = rest.next().and_then(|b| (*b as char).to_digit(16));
                match (high, low) {
                    (Some(high), Some(low)) => bytes.push((high * 16 + low) as u8),
                    _ => {
                        return Err(WireError::Form(
                            "a % escape must be followed by two hex digits",
                        ));
                    }
                }
            }
            other => bytes.push(other),
        }
    }
    String::from_utf8(bytes).map_err(|_| WireError::Form("text is not valid UTF-8"))
}

/// Parses a JSON object into its fields in order, keeping duplicates so that
/// they can be refused (a plain map would silently keep the last one).
fn json_object(body: &[u8]) -> Result<Vec<(String, Value)>, WireError> {
    struct Fields(Vec<(String, Value)>);

    impl<'de> serde::Deserialize<'de> for Fields {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct FieldsVisitor;
            impl<'de> Visitor<'de> for FieldsVisitor {
                type Value = Fields;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                    let mut fields = Vec::new();
                    while let Some(entry) = map.next_entry::<String, Value>()? {
                        if fields.len() >= 64 {
                            return Err(de::Error::custom("too many fields"));
                        }
                        fields.push(entry);
                    }
                    Ok(Fields(fields))
                }
            }
            deserializer.deserialize_map(FieldsVisitor)
        }
    }

    serde_json::from_slice::<Fields>(body)
        .map(|fields| fields.0)
        .map_err(|e| WireError::Json(e.to_string()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_mini_programs_form_decodes() {
        let body = "acc_nbr=%2213800138000%22&grade1=5&grade2=%224%22&grade3=3\
                    &txt1=%22%E6%9C%8D%E5%8B%99%E5%BE%88%E5%A5%BD%22&txt2=%22%22&txt3=%22a+b%22";
        let raw = legacy_form(body.as_bytes()).unwrap();
        assert_eq!(raw.acc_nbr, Some(json!("13800138000")));
        assert_eq!(
            raw.grades,
            [Some(json!(5)), Some(json!("4")), Some(json!(3))]
        );
        assert_eq!(
            raw.texts,
            [Some(json!("服務很好")), Some(json!("")), Some(json!("a b"))]
        );
    }

    #[test]
    fn a_form_value_that_is_not_json_is_taken_as_the_raw_string() {
        let raw = legacy_form(b"txt1=hello&acc_nbr=13800138000&txt2=%7Bnot").unwrap();
        assert_eq!(raw.texts[0], Some(json!("hello")));
        assert_eq!(raw.acc_nbr, Some(json!(13800138000_u64)));
        assert_eq!(raw.texts[1], Some(json!("{not")));
    }

    #[test]
    fn a_form_value_that_is_other_json_is_taken_as_the_raw_string() {
        let raw = legacy_form(b"txt1=true&txt2=null&txt3=%5B1%5D").unwrap();
        assert_eq!(
            raw.texts,
            [Some(json!("true")), Some(json!("null")), Some(json!("[1]"))]
        );
    }

    #[test]
    fn a_quoted_value_that_is_no_json_string_is_refused_naming_its_field() {
        for (body, field) in [
            (&b"txt1=%22%5Cud800%22"[..], "txt1"),
            (b"acc_nbr=%2213800138000", "acc_nbr"),
            (b"txt3=%22a%22b%22", "txt3"),
        ] {
            match legacy_form(body) {
                Err(WireError::Value(error)) => assert_eq!(error.field, field, "{body:?}"),
                other => panic!("{body:?} decoded to {other:?}"),
            }
        }
        match legacy_json(br#"{"txt2": "\"\\ud800\""}"#) {
            Err(WireError::Value(error)) => assert_eq!(error.field, "txt2"),
            other => panic!("decoded to {other:?}"),
        }
    }

    #[test]
    fn unknown_form_fields_are_ignored() {
        let raw = legacy_form(b"grade4=1&acc_nbr=%22123456%22").unwrap();
        assert_eq!(raw.acc_nbr, Some(json!("123456")));
    }

    #[test]
    fn a_duplicated_form_field_is_refused() {
        assert_eq!(
            legacy_form(b"grade1=1&grade1=5"),
            Err(WireError::DuplicateField("grade1".into()))
        );
    }

    #[test]
    fn a_broken_percent_escape_is_refused() {
        assert!(matches!(legacy_form(b"txt1=%zz"), Err(WireError::Form(_))));
        assert!(matches!(legacy_form(b"txt1=%4"), Err(WireError::Form(_))));
    }

    #[test]
    fn invalid_utf8_is_refused_not_replaced() {
        assert!(matches!(
            legacy_form(b"txt1=%FF%FE"),
            Err(WireError::Form(_))
        ));
        assert!(matches!(legacy_form(b"txt1=\xff"), Err(WireError::Form(_))));
    }

    #[test]
    fn a_legacy_json_body_unwraps_stringified_values() {
        let body = br#"{"acc_nbr":"\"13800138000\"","grade1":"5","grade2":4,"grade3":"\"3\"","txt1":"\"hi\"","extra":1}"#;
        let raw = legacy_json(body).unwrap();
        assert_eq!(raw.acc_nbr, Some(json!("13800138000")));
        assert_eq!(
            raw.grades,
            [Some(json!(5)), Some(json!(4)), Some(json!("3"))]
        );
        assert_eq!(raw.texts[0], Some(json!("hi")));
    }

    #[test]
    fn a_v1_body_is_taken_as_it_is() {
        let raw = v1_json(br#"{"acc_nbr":"13800138000","grade1":5,"txt1":"\"quoted\""}"#).unwrap();
        assert_eq!(raw.texts[0], Some(json!("\"quoted\"")));
    }

    #[test]
    fn a_v1_body_with_an_unknown_field_is_refused() {
        assert!(matches!(
            v1_json(br#"{"grade_1":5}"#),
            Err(WireError::UnknownField { .. })
        ));
    }

    #[test]
    fn a_json_body_with_a_duplicated_field_is_refused() {
        assert_eq!(
            v1_json(br#"{"grade1":5,"grade1":1}"#),
            Err(WireError::DuplicateField("grade1".into()))
        );
    }

    #[test]
    fn a_json_body_that_is_not_an_object_is_refused() {
        for body in [&b"[1,2]"[..], b"\"text\"", b"", b"{", b"{\"a\":NaN}"] {
            assert!(matches!(v1_json(body), Err(WireError::Json(_))), "{body:?}");
        }
    }
}

#[cfg(test)]
mod properties {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    proptest! {
        #[test]
        fn no_form_body_makes_the_decoder_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = legacy_form(&body);
        }

        #[test]
        fn no_json_body_makes_the_decoders_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = legacy_json(&body);
            let _ = v1_json(&body);
        }

        #[test]
        fn stringified_text_survives_the_form_byte_for_byte(text in any::<String>()) {
            // What the mini-program does: JSON.stringify, then percent-encode.
            let stringified = serde_json::to_string(&text).unwrap();
            let body = format!("txt1={}", utf8_percent_encode(&stringified, NON_ALPHANUMERIC));
            let raw = legacy_form(body.as_bytes()).unwrap();
            prop_assert_eq!(raw.texts[0].clone(), Some(json!(text)));
        }

        #[test]
        fn unstringified_text_survives_the_form_as_a_string_or_number(text in any::<String>()) {
            let body = format!("txt2={}", utf8_percent_encode(&text, NON_ALPHANUMERIC));
            let decoded = legacy_form(body.as_bytes());
            if text.starts_with('"') && serde_json::from_str::<String>(&text).is_err() {
                prop_assert!(matches!(decoded, Err(WireError::Value(ref e)) if e.field == "txt2"), "{decoded:?}");
                return Ok(());
            }
            let value = decoded.unwrap().texts[1].clone().unwrap();
            match value {
                serde_json::Value::String(decoded) => {
                    let unwrapped = serde_json::from_str::<String>(&text).ok();
                    prop_assert!(decoded == text || Some(decoded) == unwrapped);
                }
                serde_json::Value::Number(number) => {
                    prop_assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap(), json!(number));
                }
                other => prop_assert!(false, "unexpected {other:?}"),
            }
        }
    }
}
