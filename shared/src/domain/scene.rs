/// Where in the mini-program a submission was made (its page path or WeChat
/// scene value), sent optionally since event version 2: at most
/// [`SCENE_MAX_CHARS`] characters, no control characters, kept as sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scene(String);

/// Longest accepted scene.
pub const SCENE_MAX_CHARS: usize = 128;

/// Why a scene was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SceneError {
    #[error("must be 1 to {SCENE_MAX_CHARS} characters long")]
    Length,
    #[error("must not contain control characters")]
    ControlCharacter,
}

impl Scene {
    /// Checks `raw`.
    ///
    /// # Errors
    ///
    /// When it is empty, too long or holds a control character.
    pub fn parse(raw: String) -> Result<Self, SceneError> {
        if raw.is_empty() || raw.chars().count() > SCENE_MAX_CHARS {
            return Err(SceneError::Length);
        }
        if raw.chars().any(char::is_control) {
            return Err(SceneError::ControlCharacter);
        }
        Ok(Self(raw))
    }

    /// The scene.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_path_is_accepted() {
        assert_eq!(
            Scene::parse("pages/score/score".into()).unwrap().as_str(),
            "pages/score/score"
        );
    }

    #[test]
    fn an_empty_scene_is_rejected() {
        assert_eq!(Scene::parse(String::new()), Err(SceneError::Length));
    }

    #[test]
    fn a_scene_over_the_maximum_is_rejected() {
        assert_eq!(Scene::parse("p".repeat(129)), Err(SceneError::Length));
        assert!(Scene::parse("p".repeat(128)).is_ok());
    }

    #[test]
    fn a_scene_with_a_control_character_is_rejected() {
        assert_eq!(
            Scene::parse("a\nb".into()),
            Err(SceneError::ControlCharacter)
        );
    }
}
