//! A tree checked against its `SHA256SUMS.txt`: every listed file hashed again, and the files
//! it does not list found (`mimic-eye verify` on an output, `inputs --verify` on a download).
//!
//! The listing is read a line at a time. Sorted by path bytes (as the build writes it, and as
//! PhysioNet's are), it is merged with a walk of the tree in the same order: memory does not
//! grow with the million files of a download or a `--cohort cxr` output. A listing in another
//! order keeps a 64-bit hash per listed path to find the unlisted files. A listed path that is
//! not a plain relative path (absolute, `..`) is never opened: it is counted as outside the
//! tree; a malformed line is counted, and the check goes on.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::progress::FileProgress;
use crate::sums::{self, Digest};
use crate::walk::{self, Tree};

/// Paths relative to the tree: how many, and the first few (in path order when the listing is
/// sorted).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Listing {
    pub count: usize,
    pub first: Vec<String>,
}

/// Paths named in full, beyond which only the count is given.
const LISTING_MAX: usize = 50;

impl Listing {
    /// Adds `other`'s paths (the first ones stay the first by name).
    fn absorb(&mut self, other: Listing) {
        self.count += other.count;
        self.first.extend(other.first);
        self.first.sort();
        self.first.truncate(LISTING_MAX);
    }

    pub(crate) fn push(&mut self, shown: impl FnOnce() -> String) {
        self.count += 1;
        if self.first.len() < LISTING_MAX {
            self.first.push(shown());
        }
    }

    /// Its lines for people, under a heading saying `what`.
    pub(crate) fn text(&self, s: &mut String, what: &str) {
        use std::fmt::Write as _;
        if self.count == 0 {
            return;
        }
        let _ = writeln!(s, "  {what}: {}", self.count);
        for p in &self.first {
            let _ = writeln!(s, "    {p}");
        }
        if self.count > self.first.len() {
            let _ = writeln!(s, "    … and {} more", self.count - self.first.len());
        }
    }
}

/// What checking a tree against its listing found.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Verification {
    pub listed: usize,
    pub ok: usize,
    pub changed: Listing,
    pub missing: Listing,
    /// Present, not listed (the tree's own state and index pages aside).
    pub extra: Listing,
    /// Listed paths outside the tree (absolute, `..`): never opened.
    pub outside: Listing,
    /// Listed files a `fetch` left out on purpose (outside the cohort): not missing.
    pub not_fetched: Listing,
    /// Lines that are not `<sha256> <path>`, by number.
    pub malformed: Listing,
}

impl Verification {
    /// Adds what another part of the check found.
    fn absorb(&mut self, other: Verification) {
        self.listed += other.listed;
        self.ok += other.ok;
        for (mine, theirs) in [
            (&mut self.changed, other.changed),
            (&mut self.missing, other.missing),
            (&mut self.extra, other.extra),
            (&mut self.outside, other.outside),
            (&mut self.not_fetched, other.not_fetched),
            (&mut self.malformed, other.malformed),
        ] {
            mine.absorb(theirs);
        }
    }

    /// Every listed file matched, none is missing, none extra, and the listing was whole.
    pub fn clean(&self) -> bool {
        [&self.changed, &self.missing, &self.extra, &self.outside, &self.malformed].iter().all(|l| l.count == 0)
    }

    /// The report for people.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let what = [
            ("changed", &self.changed),
            ("missing", &self.missing),
            ("extra", &self.extra),
            ("listed outside the tree", &self.outside),
            ("malformed line", &self.malformed),
        ];
        for (what, list) in what {
            for p in &list.first {
                s.push_str(&format!("{what}: {p}\n"));
            }
            if list.count > list.first.len() {
                s.push_str(&format!("{what}: … and {} more\n", list.count - list.first.len()));
            }
        }
        s.push_str(&format!(
            "{} listed, {} verified, {} changed, {} missing, {} extra\n",
            self.listed, self.ok, self.changed.count, self.missing.count, self.extra.count
        ));
        s
    }

    /// Hashes the listed file `rel` of `root` (if it lies inside) and records what it found;
    /// `planned` tells, in a tree `fetch` filled, whether a file was meant to be there.
    fn check(&mut self, root: &Path, rel: &[u8], digest: &Digest, planned: Planned<'_>, progress: &FileProgress) {
        self.listed += 1;
        let shown = || String::from_utf8_lossy(rel).into_owned();
        if !sums::is_plain_relative(rel) {
            self.outside.push(shown);
            progress.file_done(0);
            return;
        }
        let path = root.join(OsStr::from_bytes(rel));
        let hashed = sums::hash_file(&path);
        progress.file_done(fs::metadata(&path).map_or(0, |m| m.len()));
        match hashed {
            Ok(d) if d == *digest => self.ok += 1,
            Ok(_) => self.changed.push(shown),
            Err(e) if e.kind() == io::ErrorKind::NotFound && planned.is_some_and(|p| !p(rel)) => {
                self.not_fetched.push(shown)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.missing.push(shown),
            Err(e) => self.changed.push(|| format!("{} ({e})", shown())),
        }
    }
}

/// For a tree `fetch` filled: whether a listed path was planned (else it was left out on
/// purpose).
pub(crate) type Planned<'a> = Option<&'a (dyn Fn(&[u8]) -> bool + Sync)>;

/// The lines of a checksum file, one at a time.
struct Lines {
    input: BufReader<fs::File>,
    buf: Vec<u8>,
    number: usize,
}

impl Lines {
    fn open(path: &Path) -> anyhow::Result<Self> {
        let file = crate::sys::open_regular(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Self { input: BufReader::with_capacity(1 << 16, file), buf: Vec::new(), number: 0 })
    }

    /// The next (path, digest), skipping blank lines; a malformed line is counted in `v`.
    fn next(&mut self, v: &mut Verification) -> io::Result<Option<(Vec<u8>, Digest)>> {
        loop {
            self.buf.clear();
            if self.input.read_until(b'\n', &mut self.buf)? == 0 {
                return Ok(None);
            }
            let line = self.buf.strip_suffix(b"\n").unwrap_or(&self.buf);
            self.number += 1;
            match sums::parse_line(self.number - 1, line) {
                Ok(Some(entry)) => return Ok(Some(entry)),
                Ok(None) => continue,
                Err(_) => {
                    let number = self.number;
                    v.malformed.push(|| format!("line {number}"));
                }
            }
        }
    }
}

/// Whether the listing's paths only ever increase (what the merge needs), and how many it lists.
fn sorted(path: &Path) -> anyhow::Result<(bool, u64)> {
    let mut lines = Lines::open(path)?;
    let mut scratch = Verification::default();
    let (mut last, mut in_order, mut count): (Option<Vec<u8>>, bool, u64) = (None, true, 0);
    while let Some((rel, _)) = lines.next(&mut scratch)? {
        count += 1;
        in_order &= last.as_ref().is_none_or(|l| *l < rel);
        last = Some(rel);
    }
    Ok((in_order, count))
}

/// Re-hashes every file the listing `list` names under `root` and looks for files it does not
/// list. The files are hashed on every core while the listing and the walk are merged here.
pub(crate) fn verify_tree(root: &Path, list: &Path, tree: Tree, planned: Planned<'_>) -> anyhow::Result<Verification> {
    let (in_order, listed) = sorted(list)?;
    // `verify mimiciv/2.2`: a dataset's version folder alone would say only `2.2`.
    let tail: Vec<_> = root.components().rev().take(2).map(|c| c.as_os_str().to_string_lossy()).collect();
    let what = format!("verify {}", tail.iter().rev().map(|c| c.as_ref()).collect::<Vec<_>>().join("/"));
    let progress = FileProgress::start(&what, listed);
    let (mut v, hashed) = with_hashers(root, planned, &progress, |v, check| match in_order {
        true => merge_with_walk(root, list, tree, v, check),
        false => check_unsorted(root, list, tree, v, check),
    })?;
    v.absorb(hashed);
    Ok(v)
}

/// A listed file to hash: its path and listed digest.
type Job = (Vec<u8>, Digest);

/// Runs `body` with a function that hands a listed file to one of the hashing threads (one
/// per core, fed through a bounded queue); returns what `body` found and what they found.
fn with_hashers(
    root: &Path,
    planned: Planned<'_>,
    progress: &FileProgress,
    body: impl FnOnce(&mut Verification, &mut dyn FnMut(Job)) -> anyhow::Result<()>,
) -> anyhow::Result<(Verification, Verification)> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 16);
    let (tx, rx) = async_channel::bounded::<Job>(threads * 64);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let rx = rx.clone();
                scope.spawn(move || {
                    let mut local = Verification::default();
                    while let Ok((rel, digest)) = rx.recv_blocking() {
                        local.check(root, &rel, &digest, planned, progress);
                    }
                    local
                })
            })
            .collect();
        drop(rx);
        let mut v = Verification::default();
        let walked = body(&mut v, &mut |job| {
            let _ = tx.send_blocking(job);
        });
        tx.close();
        let mut hashed = Verification::default();
        for worker in workers {
            match worker.join() {
                Ok(local) => hashed.absorb(local),
                Err(_) => anyhow::bail!("a hashing thread panicked (a bug): the check is incomplete"),
            }
        }
        walked.map(|()| (v, hashed))
    })
}

/// The sorted listing read beside a walk of the tree in the same order.
fn merge_with_walk(
    root: &Path,
    list: &Path,
    tree: Tree,
    v: &mut Verification,
    check: &mut dyn FnMut(Job),
) -> anyhow::Result<()> {
    let mut lines = Lines::open(list)?;
    let mut next = lines.next(v)?;
    walk::each_listable_file(root, tree, &mut |rel| {
        // Listed before this file but not found by the walk: hashed (and found missing).
        while next.as_ref().is_some_and(|(listed, _)| listed.as_slice() < rel) {
            if let Some(job) = next.take() {
                check(job);
            }
            next = lines.next(v)?;
        }
        if next.as_ref().is_some_and(|(listed, _)| listed.as_slice() == rel) {
            if let Some(job) = next.take() {
                check(job);
            }
            next = lines.next(v)?;
        } else {
            v.extra.push(|| String::from_utf8_lossy(rel).into_owned());
        }
        Ok(())
    })
    .with_context(|| format!("walking {}", root.display()))?;
    while let Some(job) = next {
        check(job);
        next = lines.next(v)?;
    }
    Ok(())
}

/// A listing that is not in path order: each line checked as it is read, a hash of each listed
/// path kept to find the unlisted files.
fn check_unsorted(
    root: &Path,
    list: &Path,
    tree: Tree,
    v: &mut Verification,
    check: &mut dyn FnMut(Job),
) -> anyhow::Result<()> {
    let key = |rel: &[u8]| crate::fingerprint::Fnv::default().bytes(rel).finish();
    let mut lines = Lines::open(list)?;
    let mut names = std::collections::HashSet::new();
    while let Some((rel, digest)) = lines.next(v)? {
        names.insert(key(&rel));
        check((rel, digest));
    }
    walk::each_listable_file(root, tree, &mut |rel| {
        if !names.contains(&key(rel)) {
            v.extra.push(|| String::from_utf8_lossy(rel).into_owned());
        }
        Ok(())
    })
    .with_context(|| format!("walking {}", root.display()))?;
    Ok(())
}
