//! Why a submission or an envelope was refused, naming the field at fault, so a clinic's
//! developer can fix the call without reading medlink's code. The HTTP API answers with the
//! same field (`{"code", "message", "field"}`).

/// Why a submission or envelope was refused; names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    /// The offending field (`payload` for the whole document).
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
    /// The document is over the size limit (HTTP 413); every other error is a 400.
    pub too_large: bool,
}

impl FieldError {
    /// `field` is wrong: `problem`.
    pub fn new(field: &str, problem: impl Into<String>) -> FieldError {
        FieldError {
            field: field.to_string(),
            problem: problem.into(),
            too_large: false,
        }
    }

    /// From a serde_json error, naming the field where serde does ("missing field `to`"),
    /// else `payload`.
    pub fn from_json(e: &serde_json::Error) -> FieldError {
        let msg = e.to_string();
        // serde names fields as `name` in its messages.
        let field = msg
            .split('`')
            .nth(1)
            .filter(|_| msg.contains("field"))
            .unwrap_or("payload");
        FieldError::new(field, msg.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_errors_name_their_field() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct T {
            to: String,
        }
        let e = serde_json::from_str::<T>("{}").unwrap_err();
        assert_eq!(FieldError::from_json(&e).field, "to");
        let e = serde_json::from_str::<T>("nope").unwrap_err();
        let f = FieldError::from_json(&e);
        assert_eq!((f.field.as_str(), f.too_large), ("payload", false));
        assert_eq!(FieldError::new("cmd", "x").to_string(), "cmd: x");
    }
}
