//! `mimic-eye verify`: every file `SHA256SUMS.txt` lists hashed again, and the files it does
//! not list found. The listing (sorted by path bytes, as the build writes it) is read a line at
//! a time beside a walk of the output in the same order: memory does not grow with the
//! million files of a `--cohort cxr` output. A listing in another order (edited by hand) is
//! checked from memory.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use super::walk;
use crate::sums::{self, Digest, SUMS_FILE};

/// What `mimic-eye verify` found.
#[derive(Debug, Default, Serialize)]
pub struct Verification {
    pub listed: usize,
    pub ok: usize,
    pub changed: Vec<String>,
    pub missing: Vec<String>,
    /// Present, not listed, not under `.mimic-eye/`.
    pub extra: Vec<String>,
}

impl Verification {
    pub fn clean(&self) -> bool {
        self.changed.is_empty() && self.missing.is_empty() && self.extra.is_empty()
    }

    pub fn text(&self) -> String {
        let mut s = String::new();
        for (what, list) in [("changed", &self.changed), ("missing", &self.missing), ("extra", &self.extra)] {
            for p in list {
                s.push_str(&format!("{what}: {p}\n"));
            }
        }
        s.push_str(&format!(
            "{} listed, {} verified, {} changed, {} missing, {} extra\n",
            self.listed,
            self.ok,
            self.changed.len(),
            self.missing.len(),
            self.extra.len()
        ));
        s
    }

    /// Hashes the listed file `rel` and records what it found.
    fn check(&mut self, output: &Path, rel: &[u8], digest: &Digest) {
        self.listed += 1;
        let shown = || String::from_utf8_lossy(rel).into_owned();
        match sums::hash_file(&output.join(OsStr::from_bytes(rel))) {
            Ok(d) if d == *digest => self.ok += 1,
            Ok(_) => self.changed.push(shown()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.missing.push(shown()),
            Err(e) => self.changed.push(format!("{} ({e})", shown())),
        }
    }
}

/// The lines of a checksum file, one at a time.
struct Lines {
    path: std::path::PathBuf,
    input: BufReader<fs::File>,
    buf: Vec<u8>,
    number: usize,
}

impl Lines {
    fn open(path: &Path) -> anyhow::Result<Self> {
        let file = fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            input: BufReader::with_capacity(1 << 16, file),
            buf: Vec::new(),
            number: 0,
        })
    }

    /// The next (path, digest), skipping blank lines; an error names the file and line.
    fn next(&mut self) -> io::Result<Option<(Vec<u8>, Digest)>> {
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
                Err(e) => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", self.path.display())))
                }
            }
        }
    }
}

/// Whether the listing's paths only ever increase (what the merge needs).
fn sorted(path: &Path) -> anyhow::Result<bool> {
    let mut lines = Lines::open(path)?;
    let mut last: Option<Vec<u8>> = None;
    while let Some((rel, _)) = lines.next()? {
        if last.as_ref().is_some_and(|l| *l >= rel) {
            return Ok(false);
        }
        last = Some(rel);
    }
    Ok(true)
}

/// Re-hashes every file `<output>/SHA256SUMS.txt` lists and looks for files it does not list.
pub fn verify(output: &Path) -> anyhow::Result<Verification> {
    let list = output.join(SUMS_FILE);
    if !sorted(&list)? {
        return verify_in_memory(output, &list);
    }
    let mut v = Verification::default();
    let mut lines = Lines::open(&list)?;
    let mut next = lines.next()?;
    walk::each_listable_file(output, &mut |rel| {
        // Listed before this file but not found by the walk: hashed (and found missing).
        while next.as_ref().is_some_and(|(listed, _)| listed.as_slice() < rel) {
            if let Some((listed, digest)) = next.take() {
                v.check(output, &listed, &digest);
            }
            next = lines.next()?;
        }
        if next.as_ref().is_some_and(|(listed, _)| listed.as_slice() == rel) {
            if let Some((_, digest)) = next.take() {
                v.check(output, rel, &digest);
            }
            next = lines.next()?;
        } else {
            v.extra.push(String::from_utf8_lossy(rel).into_owned());
        }
        Ok(())
    })?;
    while let Some((listed, digest)) = next {
        v.check(output, &listed, &digest);
        next = lines.next()?;
    }
    Ok(v)
}

/// [`verify`] for a listing that is not in path order: read whole.
fn verify_in_memory(output: &Path, list: &Path) -> anyhow::Result<Verification> {
    let text = fs::read(list).with_context(|| format!("reading {}", list.display()))?;
    let listed = sums::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", list.display()))?;
    let mut v = Verification::default();
    let names: std::collections::HashSet<&[u8]> = listed.iter().map(|(p, _)| p.as_slice()).collect();
    for (rel, digest) in &listed {
        v.check(output, rel, digest);
    }
    walk::each_listable_file(output, &mut |rel| {
        if !names.contains(rel) {
            v.extra.push(String::from_utf8_lossy(rel).into_owned());
        }
        Ok(())
    })?;
    Ok(v)
}
