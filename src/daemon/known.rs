//! What the watcher last saw of each file of its folder set, keyed by a 64-bit hash of the
//! path: a set of 100,000 files costs 100,000 small entries, not 100,000 paths, and a rescan
//! marks what it finds instead of building a second map. (Two paths sharing a hash, about one
//! chance in 10^10 for 100,000 files, would only delay noticing a change to the next rescan
//! that sees them differ.)

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::fingerprint::{FileIdentity, Fnv};

/// A file's identity as last seen, and the sweep that last saw it.
#[derive(Clone, Copy)]
struct Seen {
    stamp: FileIdentity,
    sweep: u32,
}

#[derive(Default)]
pub(super) struct Known {
    files: HashMap<u64, Seen>,
    sweep: u32,
}

fn key(path: &Path) -> u64 {
    Fnv::default().bytes(path.as_os_str().as_bytes()).finish()
}

impl Known {
    pub(super) fn get(&self, path: &Path) -> Option<FileIdentity> {
        self.files.get(&key(path)).map(|s| s.stamp)
    }

    pub(super) fn insert(&mut self, path: &Path, stamp: FileIdentity) {
        self.files.insert(key(path), Seen { stamp, sweep: self.sweep });
    }

    /// Records `stamp` only for a file not known yet.
    pub(super) fn insert_new(&mut self, path: &Path, stamp: FileIdentity) {
        let sweep = self.sweep;
        self.files.entry(key(path)).or_insert(Seen { stamp, sweep });
    }

    pub(super) fn remove(&mut self, path: &Path) {
        self.files.remove(&key(path));
    }

    pub(super) fn len(&self) -> usize {
        self.files.len()
    }

    /// Starts a sweep: every file found is [`Known::see`]n, then [`Known::end_sweep`] forgets
    /// the others.
    pub(super) fn begin_sweep(&mut self) {
        self.sweep = self.sweep.wrapping_add(1);
    }

    /// Marks `path` as found by this sweep; returns the identity it had when last recorded.
    pub(super) fn see(&mut self, path: &Path) -> Option<FileIdentity> {
        let sweep = self.sweep;
        let seen = self.files.get_mut(&key(path))?;
        seen.sweep = sweep;
        Some(seen.stamp)
    }

    /// Forgets the files this sweep did not find; returns how many.
    pub(super) fn end_sweep(&mut self) -> usize {
        let before = self.files.len();
        let sweep = self.sweep;
        self.files.retain(|_, s| s.sweep == sweep);
        self.files.shrink_to_fit();
        before - self.files.len()
    }
}
