//! Validated domain types. A value of one of these types has passed its
//! rules: functions downstream take the type, never a bare `String` or `i64`.

mod account_number;
mod comment_text;
mod grade;
pub mod rules;
mod scene;

pub use account_number::{AccountNumber, AccountNumberError};
pub use comment_text::{CommentText, CommentTextError};
pub use grade::{Grade, GradeError};
pub use rules::{RulesError, ValidationRules};
pub use scene::{SCENE_MAX_CHARS, Scene, SceneError};
