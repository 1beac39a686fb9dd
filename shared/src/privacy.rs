//! Phone numbers are personal data: they never appear in full in a log line
//! or an error message.

use std::sync::LazyLock;

use regex::Regex;

/// Masks the middle of an account number, keeping enough of both ends to
/// correlate log lines: `13800138000` → `138****8000`, `12345` → `1***5`.
pub fn masked(account: &str) -> String {
    let chars: Vec<char> = account.chars().collect();
    let (keep_front, keep_back) = match chars.len() {
        0..=4 => (0, 0),
        5..=7 => (1, 1),
        8..=10 => (2, 2),
        _ => (3, 4),
    };
    let hidden = chars.len() - keep_front - keep_back;
    let mut out = String::with_capacity(account.len());
    out.extend(&chars[..keep_front]);
    out.extend(std::iter::repeat_n('*', hidden));
    out.extend(&chars[chars.len() - keep_back..]);
    out
}

/// Quoted values ('…' or "…", with SQL's doubled quotes) and runs of
/// seven or more digits.
static VALUES: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"'(?:[^']|'')*'|"(?:[^"]|"")*"|\d{7,}"#).expect("a valid pattern")
});

/// An error text from outside (MySQL's messages quote the values they
/// refused: `Duplicate entry '13800138000' for key …`, `Incorrect string
/// value: '\xF0…' for column …`) made fit for a log line: every quoted
/// value becomes `'…'` and every run of seven or more digits `#…#`.
/// Backquoted identifiers (tables, columns) are kept.
pub fn scrubbed(text: &str) -> String {
    VALUES
        .replace_all(text, |found: &regex::Captures<'_>| {
            match found[0].chars().next() {
                Some('\'') => "'…'",
                Some('"') => "\"…\"",
                _ => "#…#",
            }
        })
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::{masked, scrubbed};

    #[test]
    fn database_errors_lose_their_values_but_keep_what_failed() {
        assert_eq!(
            scrubbed("Duplicate entry '13800138000' for key 'grade_event_id'"),
            "Duplicate entry '…' for key '…'"
        );
        assert_eq!(
            scrubbed(
                r"Incorrect string value: '\xF0\x9F' for column `scores`.`grade`.`txt1` at row 1"
            ),
            "Incorrect string value: '…' for column `scores`.`grade`.`txt1` at row 1"
        );
        assert_eq!(scrubbed(r#"near "it''s 13800138000""#), "near \"…\"");
        assert_eq!(
            scrubbed("account 13800138000 unknown"),
            "account #…# unknown"
        );
        assert_eq!(
            scrubbed("Connection refused (os error 111)"),
            "Connection refused (os error 111)"
        );
    }

    #[test]
    fn a_mobile_number_keeps_only_its_first_three_and_last_four_digits() {
        assert_eq!(masked("13800138000"), "138****8000");
        assert_eq!(masked("+8613800138000"), "+86*******8000");
    }

    #[test]
    fn short_values_are_masked_too() {
        assert_eq!(masked("12345"), "1***5");
        assert_eq!(masked("12"), "**");
        assert_eq!(masked(""), "");
    }

    #[test]
    fn at_least_four_digits_or_half_of_a_short_number_are_hidden() {
        for len in 1..=30 {
            let account = "9".repeat(len);
            let hidden = masked(&account).chars().filter(|c| *c == '*').count();
            let enough = if len >= 8 {
                hidden >= 4
            } else {
                hidden * 2 >= len
            };
            assert!(enough, "length {len} hid only {hidden}");
        }
    }
}
