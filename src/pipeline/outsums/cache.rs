//! The digest cache of the output's files, `.mimic-eye/sha256-cache.txt`: one line per file,
//! `<size> <mtime_ns> <inode> ` then the file's `SHA256SUMS.txt` line, sorted by path. It is
//! read alongside the sorted walk of the output (a merge, one line in memory) and written
//! anew as the walk goes, so its size on disk grows with the output, its memory does not.

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::sums::{self, Digest};

pub(super) const CACHE: &str = "sha256-cache.txt";

/// What identifies a file's content without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Identity {
    pub(super) size: u64,
    pub(super) mtime_ns: i64,
    pub(super) ino: u64,
}

impl Identity {
    pub(super) fn of(m: &fs::Metadata) -> Self {
        Self { size: m.size(), mtime_ns: crate::fingerprint::mtime_ns(m), ino: m.ino() }
    }
}

/// One cached digest.
struct Entry {
    path: Vec<u8>,
    id: Identity,
    digest: Digest,
}

/// The last build's cache, read forward in path order.
pub(super) struct CacheReader {
    lines: Option<BufReader<fs::File>>,
    line: Vec<u8>,
    next: Option<Entry>,
}

impl CacheReader {
    /// The cache at `path`; a missing or unreadable cache is an empty one.
    pub(super) fn open(path: &Path) -> Self {
        let mut reader = Self { lines: fs::File::open(path).ok().map(BufReader::new), line: Vec::new(), next: None };
        reader.advance();
        reader
    }

    fn advance(&mut self) {
        self.next = None;
        let Some(lines) = self.lines.as_mut() else { return };
        loop {
            self.line.clear();
            match lines.read_until(b'\n', &mut self.line) {
                Ok(0) | Err(_) => {
                    self.lines = None;
                    return;
                }
                Ok(_) => {}
            }
            // A damaged line is skipped: that file is hashed again.
            if let Some(entry) = parse(&self.line) {
                self.next = Some(entry);
                return;
            }
        }
    }

    /// The cached digest of `path` if its identity is still `id`. Paths must be asked for in
    /// ascending order.
    pub(super) fn lookup(&mut self, path: &[u8], id: Identity) -> Option<Digest> {
        while self.next.as_ref().is_some_and(|e| e.path.as_slice() < path) {
            self.advance();
        }
        let entry = self.next.as_ref().filter(|e| e.path == path)?;
        (entry.id == id).then_some(entry.digest)
    }
}

fn parse(line: &[u8]) -> Option<Entry> {
    let mut parts = line.splitn(4, |&b| b == b' ');
    let mut number = || std::str::from_utf8(parts.next()?).ok()?.parse::<i128>().ok();
    let (size, mtime_ns, ino) = (number()?, number()?, number()?);
    let id = Identity {
        size: u64::try_from(size).ok()?,
        mtime_ns: i64::try_from(mtime_ns).ok()?,
        ino: u64::try_from(ino).ok()?,
    };
    let rest = parts.next()?;
    let rest = rest.strip_suffix(b"\n").unwrap_or(rest);
    let (path, digest) = sums::parse(rest).ok()?.pop()?;
    Some(Entry { path, id, digest })
}

/// Appends one cache line for `path`.
pub(super) fn write_line(out: &mut impl Write, path: &[u8], id: Identity, digest: &Digest) -> io::Result<()> {
    write!(out, "{} {} {} ", id.size, id.mtime_ns, id.ino)?;
    out.write_all(&sums::format_line(digest, path))
}
