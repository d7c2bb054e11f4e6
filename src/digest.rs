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
    let mut s = String::with_capacity(64);
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

pub(crate) fn parse_hex(s: &str) -> Option<Digest> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut d = [0u8; 32];
    for (i, out) in d.iter_mut().enumerate() {
        *out = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
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
