//! What a copied output file was made from, and its compact form in a job's file list: a
//! `--cohort cxr` build in `files = "copy"` mode copies 377,000 images, and their records live
//! on disk beside the paths, not in memory or in a JSON manifest. A leaf module.

use std::fs;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::fingerprint::FileIdentity;

/// What a copied output file was made from: the source's identity when it was copied, and the
/// SHA-256 of the bytes copied. A source replaced by other bytes (even of the same size with an
/// older mtime) has another inode or ctime, so it is copied again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CopyRecord {
    /// The source's identity when it was copied.
    #[serde(flatten)]
    pub source: FileIdentity,
    /// SHA-256 of the copied bytes, lower-case hex (empty in records of older builds, which
    /// kept an FNV hash instead).
    #[serde(default)]
    pub sha256: String,
    /// A copy-on-write clone (`files = "reflink"`) rather than a byte copy.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reflink: bool,
    /// The copy's own inode and mtime when it was made (a rename keeps both): while the output
    /// file still has them, `SHA256SUMS.txt` takes `sha256` instead of reading it again.
    #[serde(default)]
    pub copy_ino: u64,
    #[serde(default)]
    pub copy_mtime_ns: i64,
}

impl CopyRecord {
    /// The source identity part of a record (hash left empty).
    pub(crate) fn identity(meta: &fs::Metadata) -> Self {
        Self { source: FileIdentity::of(meta), ..Default::default() }
    }

    /// Records the copy `dest` (just written) as this record's output.
    pub(crate) fn set_copy(&mut self, dest: &fs::Metadata) {
        use std::os::unix::fs::MetadataExt;
        self.copy_ino = dest.ino();
        self.copy_mtime_ns = crate::fingerprint::mtime_ns(dest);
    }

    /// Same source, as far as its identity tells.
    pub(crate) fn same_source(&self, other: &CopyRecord) -> bool {
        self.source == other.source
    }
}

/// The first byte of an encoded record: none (a hard link, a symbolic link, a written file),
/// a byte copy or a clone.
const NONE: u8 = 0;
const COPY: u8 = 1;
const CLONE: u8 = 2;

/// Writes `record` (or its absence) in the list's binary form: a tag byte, then for a record
/// the source's dev, ino, size, mtime and ctime, a digest flag and 32 digest bytes, and the
/// copy's ino and mtime, little-endian (90 bytes, against about 300 as JSON).
pub(crate) fn encode(record: Option<&CopyRecord>, out: &mut impl Write) -> io::Result<()> {
    let Some(r) = record else { return out.write_all(&[NONE]) };
    let mut buf = [0u8; 90];
    buf[0] = if r.reflink { CLONE } else { COPY };
    let s = &r.source;
    let words = [s.dev, s.ino, s.size, s.mtime_ns as u64, s.ctime_ns as u64];
    for (i, w) in words.into_iter().enumerate() {
        buf[1 + 8 * i..9 + 8 * i].copy_from_slice(&w.to_le_bytes());
    }
    if let Some(digest) = crate::sums::parse_hex(&r.sha256) {
        buf[41] = 1;
        buf[42..74].copy_from_slice(&digest);
    }
    buf[74..82].copy_from_slice(&r.copy_ino.to_le_bytes());
    buf[82..90].copy_from_slice(&r.copy_mtime_ns.to_le_bytes());
    out.write_all(&buf)
}

/// Reads what [`encode`] wrote.
pub(crate) fn decode(input: &mut impl Read) -> io::Result<Option<CopyRecord>> {
    let mut tag = [0u8; 1];
    input.read_exact(&mut tag)?;
    let reflink = match tag[0] {
        NONE => return Ok(None),
        COPY => false,
        CLONE => true,
        other => return Err(io::Error::new(io::ErrorKind::InvalidData, format!("unknown copy record tag {other}"))),
    };
    let mut buf = [0u8; 89];
    input.read_exact(&mut buf)?;
    let word = |at: usize| u64::from_le_bytes(buf[at..at + 8].try_into().unwrap_or_default());
    let source = FileIdentity {
        dev: word(0),
        ino: word(8),
        size: word(16),
        mtime_ns: word(24) as i64,
        ctime_ns: word(32) as i64,
    };
    let sha256 = match buf[40] {
        0 => String::new(),
        _ => crate::sums::hex(&buf[41..73].try_into().unwrap_or_default()),
    };
    Ok(Some(CopyRecord { source, sha256, reflink, copy_ino: word(73), copy_mtime_ns: word(81) as i64 }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_as_written() {
        let copy = CopyRecord {
            source: FileIdentity { dev: 2049, ino: 1 << 40, size: 123_456, mtime_ns: -5, ctime_ns: i64::MAX },
            sha256: crate::sums::hex(&[7u8; 32]),
            reflink: false,
            copy_ino: 99,
            copy_mtime_ns: 1_700_000_000_123_456_789,
        };
        let clone_of_old_build = CopyRecord { reflink: true, sha256: String::new(), ..copy.clone() };
        let mut bytes = Vec::new();
        for r in [Some(&copy), None, Some(&clone_of_old_build)] {
            encode(r, &mut bytes).unwrap();
        }
        assert_eq!(bytes.len(), 90 + 1 + 90);
        let mut input = &bytes[..];
        assert_eq!(decode(&mut input).unwrap(), Some(copy));
        assert_eq!(decode(&mut input).unwrap(), None);
        assert_eq!(decode(&mut input).unwrap(), Some(clone_of_old_build));
        assert!(decode(&mut input).is_err(), "nothing left");
        assert!(decode(&mut &[9u8][..]).is_err(), "an unknown tag");
    }
}
