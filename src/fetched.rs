//! What `fetch` knows of the tree it fills, in `<input>/.mimic-eye-fetch/` (read by `inputs` too):
//! - `verified.tsv`: each verified file's digest with its size, mtime and inode, appended as
//!   files complete, so a rerun knows a file in place is whole without hashing hundreds of
//!   gigabytes again (like the build's digest cache). A file whose identity changed since is
//!   hashed again.
//! - `planned.txt`: every file a fetch set out to get (the union over runs), so `inputs` can
//!   tell a listed file left out on purpose (outside the cohort) from a missing one.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, BufRead, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::sums::{hex, parse_hex, Digest};

/// A file's identity when it was verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    size: u64,
    mtime_ns: i64,
    ino: u64,
}

impl Identity {
    fn of(meta: &fs::Metadata) -> Self {
        Self { size: meta.len(), mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(), ino: meta.ino() }
    }
}

/// The record of verified files, keyed by a hash of their path relative to the input (a
/// `cxr` cohort's fetch verifies 600,000 files: no path kept per file).
pub(crate) struct Verified {
    root: PathBuf,
    known: HashMap<u64, (Identity, Digest)>,
    log: Mutex<Option<io::BufWriter<fs::File>>>,
    /// The planned files already recorded, and where new ones are appended.
    planned: Mutex<(HashSet<u64>, Option<io::BufWriter<fs::File>>)>,
}

/// The fetch's own folder in the tree it fills.
const DIR: &str = ".mimic-eye-fetch";

/// The files a fetch planned for the tree at `root` (paths relative to it, as hashes), or
/// `None` when no fetch filled it.
pub(crate) fn planned(root: &Path) -> Option<HashSet<u64>> {
    let file = fs::File::open(root.join(DIR).join("planned.txt")).ok()?;
    Some(io::BufReader::new(file).lines().map_while(Result::ok).map(|rel| key(Path::new(&rel))).collect())
}

/// The key a planned or verified path is kept under (its path relative to the tree's root).
pub(crate) fn key(rel: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    crate::fingerprint::Fnv::default().bytes(rel.as_os_str().as_bytes()).finish()
}

impl Verified {
    /// The record under `root` (empty when there is none or it cannot be read: files are then
    /// hashed once more).
    pub(crate) fn open(root: &Path) -> Self {
        let dir = root.join(DIR);
        let path = dir.join("verified.tsv");
        let mut known = HashMap::new();
        if let Ok(file) = fs::File::open(&path) {
            for line in io::BufReader::new(file).lines().map_while(Result::ok) {
                let mut f = line.splitn(5, '\t');
                let (Some(d), Some(size), Some(mtime), Some(ino), Some(rel)) =
                    (f.next(), f.next(), f.next(), f.next(), f.next())
                else {
                    continue;
                };
                let (Some(d), Ok(size), Ok(mtime_ns), Ok(ino)) =
                    (parse_hex(d), size.parse(), mtime.parse(), ino.parse())
                else {
                    continue;
                };
                known.insert(key(Path::new(rel)), (Identity { size, mtime_ns, ino }, d));
            }
        }
        let log = fs::create_dir_all(&dir)
            .and_then(|()| fs::OpenOptions::new().create(true).append(true).open(&path))
            .map(io::BufWriter::new)
            .map_err(|e| tracing::warn!(file = %path.display(), error = %e, "cannot record verified files: a rerun hashes them again"))
            .ok();
        let plan_file =
            fs::OpenOptions::new().create(true).append(true).open(dir.join("planned.txt")).map(io::BufWriter::new).ok();
        let planned = Mutex::new((planned(root).unwrap_or_default(), plan_file));
        Self { root: root.to_path_buf(), known, log: Mutex::new(log), planned }
    }

    /// Whether `path` is in place with digest `expected`: from the record when its identity
    /// is unchanged, else by hashing it once (and recording it).
    pub(crate) fn holds(&self, path: &Path, expected: &Digest) -> bool {
        let Ok(meta) = fs::metadata(path) else { return false };
        if !meta.is_file() {
            return false;
        }
        let rel = path.strip_prefix(&self.root).unwrap_or(path);
        if self.known.get(&key(rel)) == Some(&(Identity::of(&meta), *expected)) {
            return true;
        }
        match crate::sums::hash_file(path) {
            Ok(d) if d == *expected => {
                self.record(path, &d);
                true
            }
            _ => false,
        }
    }

    /// Records a file just verified.
    pub(crate) fn record(&self, path: &Path, digest: &Digest) {
        let Ok(meta) = fs::metadata(path) else { return };
        let id = Identity::of(&meta);
        let rel = path.strip_prefix(&self.root).unwrap_or(path);
        let Some(rel) = rel.to_str().filter(|r| !r.contains(['\t', '\n'])) else { return };
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(out) = log.as_mut() {
            let _ = writeln!(out, "{}\t{}\t{}\t{}\t{rel}", hex(digest), id.size, id.mtime_ns, id.ino);
        }
    }

    /// Records that a fetch set out to get `path`.
    pub(crate) fn plan(&self, path: &Path) {
        let rel = path.strip_prefix(&self.root).unwrap_or(path);
        let Some(text) = rel.to_str().filter(|r| !r.contains('\n')) else { return };
        let mut planned = self.planned.lock().unwrap_or_else(|e| e.into_inner());
        let (known, out) = &mut *planned;
        if known.insert(key(rel)) {
            if let Some(out) = out.as_mut() {
                let _ = writeln!(out, "{text}");
            }
        }
    }

    /// Writes out what was recorded.
    pub(crate) fn flush(&self) {
        if let Some(out) = self.log.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            let _ = out.flush();
        }
        if let Some(out) = self.planned.lock().unwrap_or_else(|e| e.into_inner()).1.as_mut() {
            let _ = out.flush();
        }
    }
}
