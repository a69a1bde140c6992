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
}
