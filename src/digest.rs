//! SHA-256 digests and the check of a file against its expected digest. A leaf: the reading
//! thread ([`crate::source`]) checks against it, [`crate::sums`] knows where digests come from.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Told the outcome of every check (the build's integrity record, for provenance).
pub trait Recorder: Send + Sync + std::fmt::Debug {
    fn outcome(&self, path: &Path, matched: bool);
}

/// The error of a file whose bytes do not hash to its listed digest.
pub(crate) const MISMATCH: &str = "SHA-256 differs from SHA256SUMS.txt: the download is incomplete or damaged";

pub(crate) type Digest = [u8; 32];

/// A digest as lower-case hex, as in SHA256SUMS.txt.
pub fn hex(d: &Digest) -> String {
    // A table, not a `format!` per byte: the output's SHA256SUMS.txt has a line per file.
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(64);
    for b in d {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

pub(crate) fn parse_hex(s: &str) -> Option<Digest> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    // Every digit was checked above: a nibble each, no parse of a string per byte (a mirror's
    // checksum file has a million lines, read at every build).
    let nibble = |b: u8| match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    };
    let bytes = s.as_bytes();
    let mut d = [0u8; 32];
    for (i, out) in d.iter_mut().enumerate() {
        *out = nibble(bytes[2 * i]) << 4 | nibble(bytes[2 * i + 1]);
    }
    Some(d)
}

/// The digest a file must have, checked at the end of its read.
#[derive(Debug, Clone)]
pub struct Expected {
    pub digest: Digest,
    pub path: PathBuf,
    report: Option<Arc<dyn Recorder>>,
}

impl Expected {
    /// A check that records nothing (tests, `decode`).
    pub fn bare(path: &Path, digest: Digest) -> Self {
        Self { digest, path: path.to_path_buf(), report: None }
    }

    /// A check whose outcome `report` records.
    pub fn recorded(path: &Path, digest: Digest, report: Arc<dyn Recorder>) -> Self {
        Self { digest, path: path.to_path_buf(), report: Some(report) }
    }

    /// The listed digest.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// Compares and records; the error for a mismatch.
    pub fn check(&self, actual: &Digest) -> io::Result<()> {
        let matched = *actual == self.digest;
        if let Some(r) = &self.report {
            r.outcome(&self.path, matched);
        }
        if matched {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::InvalidData, MISMATCH))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_print_as_lower_hex_and_parse_back_in_either_case() {
        let d: Digest = std::array::from_fn(|i| (i * 37 + 5) as u8);
        let text = hex(&d);
        assert_eq!(&text[..8], "052a4f74");
        assert_eq!(parse_hex(&text), Some(d));
        assert_eq!(parse_hex(&text.to_uppercase()), Some(d));
        assert_eq!(parse_hex(&text[1..]), None, "63 digits");
        assert_eq!(parse_hex(&format!("g{}", &text[1..])), None, "not a digit");
    }
}
