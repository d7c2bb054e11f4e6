//! Fingerprints of input files: size, mtime and a hash of the file's first and last 64 KiB.
//!
//! The start is hashed past the header line's bytes too (a new version of a table has the same
//! header but different first rows), and the end catches appended rows; size and mtime catch the
//! rest. FNV-1a keeps the value stable across builds of this program.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const SAMPLE: u64 = 64 << 10;

/// A stable 64-bit FNV-1a hasher.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub(crate) fn bytes(mut self, bytes: &[u8]) -> Self {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }
    pub(crate) fn u64(self, v: u64) -> Self {
        self.bytes(&v.to_le_bytes())
    }
    pub(crate) fn str(self, s: &str) -> Self {
        self.bytes(s.as_bytes()).u64(s.len() as u64)
    }
    pub(crate) fn finish(self) -> u64 {
        self.0
    }
}

/// A file's modification time in nanoseconds since the epoch.
pub(crate) fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.mtime().saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec())
}

/// What identifies one version of a file: a rewrite in place changes the times, a truncation or
/// an append the size, a replacement the inode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl FileIdentity {
    pub(crate) fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: mtime_ns(meta),
            ctime_ns: meta.ctime().saturating_mul(1_000_000_000).saturating_add(meta.ctime_nsec()),
        }
    }

    /// The identity of the file at `path` (following links), if it is there.
    pub(crate) fn of_path(path: &Path) -> Option<Self> {
        std::fs::metadata(path).ok().map(|m| Self::of(&m))
    }
}

/// A file's size, mtime and a hash of its first and last 64 KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Fingerprint {
    pub size: u64,
    pub mtime_ns: i64,
    pub sample_fnv: u64,
}

/// The fingerprint of a file, or `None` when it cannot be read (its job then fails at open).
pub(crate) fn of_file(path: &Path) -> Option<Fingerprint> {
    fingerprint(path).ok()
}

fn fingerprint(path: &Path) -> std::io::Result<Fingerprint> {
    let mut f = crate::sys::open_regular(path)?;
    let meta = f.metadata()?;
    let len = meta.len();
    let mut buf = vec![0u8; SAMPLE.min(len) as usize];
    f.read_exact(&mut buf)?;
    let mut h = Fnv::default().bytes(&buf);
    if len > SAMPLE {
        f.seek(SeekFrom::Start(len - SAMPLE.min(len - SAMPLE)))?;
        buf.resize(SAMPLE.min(len - SAMPLE) as usize, 0);
        f.read_exact(&mut buf)?;
        h = h.bytes(&buf);
    }
    Ok(Fingerprint { size: len, mtime_ns: mtime_ns(&meta), sample_fnv: h.finish() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_with_content_not_with_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.csv");
        std::fs::write(&p, b"a,b\n1,2\n").unwrap();
        let a = of_file(&p);
        assert_eq!(a, of_file(&p));
        std::fs::write(&p, b"a,b\n1,3\n").unwrap();
        assert_ne!(a, of_file(&p));
    }
}
