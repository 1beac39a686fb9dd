//! Progress on long operator commands.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar on stderr, drawn only when stderr is a terminal,
/// counting `length` things called `unit`.
pub fn bar(length: u64, message: &str, unit: &str) -> ProgressBar {
    let progress = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
    progress.set_style(
        ProgressStyle::with_template(&format!(
            "{{msg}} [{{bar:30}}] {{human_pos}}/{{human_len}} {unit}, {{per_sec}}, ETA {{eta}}"
        ))
        .expect("a valid template")
        .progress_chars("=> "),
    );
    progress.set_message(message.to_owned());
    progress
}
