//! Files: what refers to a stored file ([`FileRef`]), as the upload answers it and as a
//! command will carry it. Files are content-addressed: the SHA-256 of their bytes is their
//! name in every node's file store.

use serde::{Deserialize, Serialize};

/// A stored file, named by its content.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRef {
    /// SHA-256 of the bytes, 64 lowercase hex digits.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// The name the uploader gave it (for people; never a path).
    #[serde(default)]
    pub name: String,
    /// Its media type, e.g. `application/pdf` or `application/dicom`.
    #[serde(default)]
    pub media_type: String,
}

/// The most files one command may reference.
pub const MAX_FILES: usize = 32;

impl FileRef {
    /// The rules a node holds a reference to: which field is wrong, and why.
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if !valid_sha256(&self.sha256) {
            return Err(("sha256", "must be 64 lowercase hex digits"));
        }
        if self.name.len() > 255
            || self
                .name
                .chars()
                .any(|c| c.is_control() || c == '/' || c == '\\')
        {
            return Err(("name", "at most 255 bytes, no / \\ or control characters"));
        }
        if self.media_type.len() > 127 || !self.media_type.bytes().all(|b| b.is_ascii_graphic()) {
            return Err((
                "media_type",
                "at most 127 printable ASCII characters, no spaces",
            ));
        }
        Ok(())
    }
}

/// Whether `s` is a SHA-256 as file references write it: 64 lowercase hex digits.
pub fn valid_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_64_lowercase_hex_digits() {
        assert!(valid_sha256(&"a1".repeat(32)));
        assert!(!valid_sha256(&"A1".repeat(32)));
        assert!(!valid_sha256(&"a1".repeat(31)));
        assert!(!valid_sha256("../../etc/passwd"));
    }

    #[test]
    fn a_reference_names_what_is_wrong() {
        let ok = FileRef {
            sha256: "ab".repeat(32),
            size: 5,
            name: "report.pdf".into(),
            media_type: "application/pdf".into(),
        };
        assert_eq!(ok.check(), Ok(()));
        let bad = |f: fn(&mut FileRef)| {
            let mut r = ok.clone();
            f(&mut r);
            r.check().unwrap_err().0
        };
        assert_eq!(bad(|r| r.sha256 = "x".into()), "sha256");
        assert_eq!(bad(|r| r.name = "../etc/passwd".into()), "name");
        assert_eq!(bad(|r| r.media_type = "text/plain; x".into()), "media_type");
    }
}
