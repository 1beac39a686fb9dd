//! What the mini-program sends, made up deterministically: submission `i` is
//! always the same account, grades and comments (Chinese text with emoji),
//! so that every figure of a run is about the same traffic.

use score_shared::{Channel, RawSubmission, ScoreSubmitted};

/// Comments as people write them: Chinese, punctuation, emoji.
const COMMENTS: [&str; 8] = [
    "服务很好，态度热情👍",
    "环境干净，价格实惠😊",
    "等了很久才有人来，希望改进🙏",
    "非常满意！下次还来🎉🎉",
    "一般般吧",
    "师傅技术很专业，解释得很清楚👌",
    "电话一直打不通😤，其他还行",
    "",
];

/// One submission's fields.
#[derive(Clone, Debug)]
pub struct Sample {
    pub acc_nbr: String,
    pub grades: [u8; 3],
    pub texts: [&'static str; 3],
}

/// Submission number `i`: one of a million accounts, grades 1 to 5.
pub fn sample(i: u64) -> Sample {
    let mix = i.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
    let pick = |shift: u32, n: u64| ((mix >> shift) % n) as usize;
    Sample {
        acc_nbr: format!("138{:08}", mix % 1_000_000),
        grades: [0, 8, 16].map(|shift| 1 + pick(shift, 5) as u8),
        texts: [24, 32, 40].map(|shift| COMMENTS[pick(shift, COMMENTS.len() as u64)]),
    }
}

/// The form body `wx.request` sends for submission `i` to `POST /score`.
pub fn legacy_body(i: u64) -> String {
    let sample = sample(i);
    let grades = sample.grades.map(|g| g.to_string());
    pipeline_tests::legacy_form_body(
        &sample.acc_nbr,
        [&grades[0], &grades[1], &grades[2]],
        sample.texts,
    )
}

/// The JSON body of submission `i` for `POST /v1/scores`.
pub fn v1_body(i: u64) -> serde_json::Value {
    let s = sample(i);
    serde_json::json!({
        "acc_nbr": s.acc_nbr,
        "grade1": s.grades[0], "grade2": s.grades[1], "grade3": s.grades[2],
        "txt1": s.texts[0], "txt2": s.texts[1], "txt3": s.texts[2],
    })
}

/// The event the ingest API would append for submission `i`, validated by
/// the same rules.
///
/// # Panics
///
/// If the made-up submission broke a rule (a bug in this module).
pub fn event(i: u64) -> ScoreSubmitted {
    let s = sample(i);
    let raw = RawSubmission {
        acc_nbr: Some(s.acc_nbr.into()),
        grades: s.grades.map(|g| Some(g.into())),
        texts: s.texts.map(|t| Some(t.into())),
        scene: None,
    };
    pipeline_tests::accepted_event(&raw, Channel::LegacyForm)
}

#[cfg(test)]
mod tests {
    use score_shared::{Submission, ValidationRules};

    use super::*;

    #[test]
    fn samples_are_valid_varied_and_repeatable() {
        let events: Vec<_> = (0..1000).map(event).collect();
        let accounts: std::collections::HashSet<_> =
            events.iter().map(|e| e.acc_nbr.clone()).collect();
        assert!(accounts.len() > 900, "{} accounts", accounts.len());
        assert!(events.iter().any(|e| e.txt1.contains('👍')));
        assert_eq!(legacy_body(7), legacy_body(7));
        assert_ne!(legacy_body(7), legacy_body(8));
    }

    #[test]
    fn the_legacy_body_is_what_the_mini_program_sends() {
        let body = legacy_body(3);
        let raw = ingest_api::wire::legacy_form(body.as_bytes()).expect("decodes");
        let submission = Submission::parse(&raw, &ValidationRules::default()).expect("valid");
        assert_eq!(submission.account.as_str(), sample(3).acc_nbr);
        assert!(body.starts_with("acc_nbr=%22138"), "{body}");
    }
}
