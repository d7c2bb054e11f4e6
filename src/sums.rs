//! PhysioNet's `SHA256SUMS.txt`: reading it, and what a build checked against it.
//!
//! Each dataset's version folder may hold a `SHA256SUMS.txt` (`<64 lower-case hex> <path>` per
//! file, LF; `physionet.md` §2). A build parses each one once ([`Sums::load`]); every table it
//! reads is hashed on its reading thread as it is read ([`crate::source`]) and every file it
//! copies as it is copied, and compared at the end of the read with the listed digest. Files not
//! listed are not checked. [`crate::integrity::Integrity`] records per dataset what was read and what matched, for
//! the summary's provenance.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::config::Config;
pub(crate) use crate::digest::{hex, parse_hex, Digest, Expected, MISMATCH};
use crate::layout::DatasetKey;

pub(crate) const SUMS_FILE: &str = "SHA256SUMS.txt";

/// SHA-256 of a file's bytes.
pub(crate) fn hash_file(path: &Path) -> io::Result<Digest> {
    thread_local! {
        // One buffer per thread, reused: a first build's output manifest hashes 100,000 files
        // and needs no fresh 256 KiB buffer for each.
        static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; crate::source::CHUNK]);
    }
    let mut file = crate::sys::open_regular(path)?;
    let mut hasher = Sha256::new();
    BUF.with_borrow_mut(|buf| loop {
        match file.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    })?;
    Ok(hasher.finalize().into())
}

/// The lines of a checksum file as (path relative to its folder, digest). PhysioNet writes one
/// space between the two; `sha256sum`'s own two spaces or ` *` (binary mode) are accepted too,
/// and its escaped names (a line starting with `\`). Blank lines are skipped; a malformed line
/// is an error naming its number.
pub(crate) fn parse(text: &[u8]) -> Result<Vec<(Vec<u8>, Digest)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        if let Some(entry) = parse_line(i, line)? {
            out.push(entry);
        }
    }
    Ok(out)
}

/// One line (its 0-based number `i`) of a checksum file; `None` for a blank line.
pub(crate) fn parse_line(i: usize, line: &[u8]) -> Result<Option<(Vec<u8>, Digest)>, String> {
    {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return Ok(None);
        }
        let (escaped, line) = match line.strip_prefix(b"\\") {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let bad = || format!("line {}: not `<sha256> <path>`", i + 1);
        if line.len() < 66 || line[64] != b' ' {
            return Err(bad());
        }
        let digest = std::str::from_utf8(&line[..64]).ok().and_then(parse_hex).ok_or_else(bad)?;
        let mut path = &line[65..];
        if let Some(rest) = path.strip_prefix(b" ").or_else(|| path.strip_prefix(b"*")) {
            path = rest;
        }
        if path.is_empty() {
            return Err(bad());
        }
        let path = if escaped { unescape(path) } else { path.to_vec() };
        Ok(Some((path, digest)))
    }
}

fn unescape(p: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(p.len());
    let mut it = p.iter();
    while let Some(&b) = it.next() {
        if b == b'\\' {
            match it.next() {
                Some(b'n') => out.push(b'\n'),
                Some(b'r') => out.push(b'\r'),
                Some(&o) => out.push(o),
                None => out.push(b'\\'),
            }
        } else {
            out.push(b);
        }
    }
    out
}

/// One line in `sha256sum`'s format for `rel`: names holding `\`, LF or CR are escaped and the
/// line starts with `\`, as coreutils writes and reads them.
pub(crate) fn format_line(digest: &Digest, rel: &[u8]) -> Vec<u8> {
    let needs = rel.iter().any(|b| matches!(b, b'\\' | b'\n' | b'\r'));
    let mut line = Vec::with_capacity(rel.len() + 67);
    if needs {
        line.push(b'\\');
    }
    line.extend_from_slice(hex(digest).as_bytes());
    line.push(b' ');
    for &b in rel {
        match b {
            b'\\' if needs => line.extend_from_slice(b"\\\\"),
            b'\n' => line.extend_from_slice(b"\\n"),
            b'\r' => line.extend_from_slice(b"\\r"),
            _ => line.push(b),
        }
    }
    line.push(b'\n');
    line
}

/// A dataset's checksum file, parsed: absolute path → digest.
#[derive(Debug, Default, Clone)]
pub(crate) struct DatasetSums {
    pub folder: PathBuf,
    /// The folder has a `SHA256SUMS.txt` (even one that could not be parsed).
    pub present: bool,
    /// The tables' lines, by path (the inventory names the missing ones).
    pub listed: HashMap<PathBuf, Digest>,
    /// The lines of the files the build copies, by a hash of the path: a `--cohort cxr` build
    /// copies about 600,000 listed images and reports, and whole paths as keys cost about 200
    /// bytes a file (sorted by key and binary-searched: 40 bytes a line).
    copied: Vec<(u64, Digest)>,
    /// Why the file could not be read (then nothing is checked: the dataset is unverifiable).
    pub error: Option<String>,
    /// Malformed lines (passed over; the other lines are checked).
    pub malformed: u64,
    /// Files a malformed line seems to be meant for: read unverified, said aloud.
    pub unverifiable: HashSet<PathBuf>,
}

impl DatasetSums {
    /// Keeps only the lines whose relative path `keep` accepts, reading the file line by line:
    /// MIMIC-CXR-JPG's lists about a million files, of which a build reads a few thousand, so
    /// memory stays with what the build reads, not with the size of the download.
    pub(crate) fn load_where(folder: &Path, keep: &dyn Fn(&[u8]) -> bool) -> Self {
        use std::os::unix::ffi::OsStrExt;
        let (mut listed, mut unverifiable) = (HashMap::new(), HashSet::new());
        let read = read_sums_file(
            folder,
            keep,
            &mut |rel, d| {
                listed.insert(folder.join(std::ffi::OsStr::from_bytes(rel)), d);
            },
            &mut |line| {
                if let Some(rel) = path_of_malformed(line).filter(|rel| keep(rel)) {
                    unverifiable.insert(folder.join(std::ffi::OsStr::from_bytes(rel)));
                }
            },
        );
        if read.error.is_some() {
            listed.clear();
        }
        if let Some(first) = read.first_malformed {
            tracing::warn!(
                file = %folder.join(SUMS_FILE).display(),
                lines = read.malformed,
                first,
                "malformed lines in a checksum file: passed over (the files they were meant for are read unverified)"
            );
        }
        DatasetSums {
            folder: folder.to_path_buf(),
            present: read.present,
            listed,
            copied: Vec::new(),
            error: read.error,
            malformed: read.malformed,
            unverifiable,
        }
    }
}

/// Hands every well-formed line of `folder`'s checksum file to `each` (relative path, digest),
/// a line at a time (MIMIC-CXR-JPG's lists a million files); says whether the file exists and
/// why it could not be read.
pub(crate) fn each_listed(folder: &Path, each: &mut dyn FnMut(&[u8], Digest)) -> (bool, Option<String>) {
    let read = read_sums_file(folder, &|_| true, each, &mut |_| {});
    (read.present, read.error)
}

/// What reading a checksum file found besides its lines.
#[derive(Debug, Default)]
struct SumsRead {
    /// The file exists.
    present: bool,
    /// Why it could not be read (then what was read before is dropped).
    error: Option<String>,
    /// Lines that are not `<sha256> <path>`: passed over, the others still checked.
    malformed: u64,
    first_malformed: Option<usize>,
}

/// Reads `folder`'s checksum file line by line and hands each line `keep` accepts to `put`;
/// a malformed line goes to `bad` (its 1-based number and bytes) and the reading goes on, so
/// one damaged line never turns the checking off for the whole dataset.
fn read_sums_file(
    folder: &Path,
    keep: &dyn Fn(&[u8]) -> bool,
    put: &mut dyn FnMut(&[u8], Digest),
    bad: &mut dyn FnMut(&[u8]),
) -> SumsRead {
    use std::io::BufRead;
    let file = folder.join(SUMS_FILE);
    let mut read = SumsRead { present: true, ..Default::default() };
    let reader = match crate::sys::open_regular(&file) {
        Ok(f) => io::BufReader::with_capacity(crate::source::CHUNK, f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return SumsRead::default(),
        Err(e) => {
            read.error = Some(format!("{}: {e}", file.display()));
            return read;
        }
    };
    for (i, line) in reader.split(b'\n').enumerate() {
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                read.error = Some(format!("{}: {e}", file.display()));
                return read;
            }
        };
        match parse_line(i, &line) {
            // A listed path is data: one leaving the folder (absolute, `..`) is malformed.
            Ok(Some((rel, _))) if !is_plain_relative(&rel) => {
                read.malformed += 1;
                read.first_malformed.get_or_insert(i + 1);
            }
            Ok(Some((rel, d))) if keep(&rel) => put(&rel, d),
            Ok(_) => {}
            Err(_) => {
                read.malformed += 1;
                read.first_malformed.get_or_insert(i + 1);
                bad(&line);
            }
        }
    }
    read
}

/// Whether a listed path is relative and made of plain names only (no `..`, `.` or root).
pub(crate) fn is_plain_relative(rel: &[u8]) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let path = Path::new(std::ffi::OsStr::from_bytes(rel));
    !rel.is_empty() && path.components().all(|c| matches!(c, std::path::Component::Normal(_)))
}

/// The path a malformed checksum line seems to name (what follows its first space), to tell
/// which file it was meant for.
fn path_of_malformed(line: &[u8]) -> Option<&[u8]> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let at = line.iter().position(|&b| b == b' ')?;
    let rest = &line[at..];
    let start = rest.iter().position(|&b| b != b' ' && b != b'*')?;
    Some(&rest[start..])
}

/// The key of a copied file's line: a hash of its path, component by component (as paths
/// compare), so `a//b` and `a/b` are one file.
fn path_key(path: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    path.hash(&mut hasher);
    hasher.finish()
}

/// Every dataset's checksum file, parsed once per build.
#[derive(Debug, Default, Clone)]
pub(crate) struct Sums {
    pub datasets: BTreeMap<DatasetKey, DatasetSums>,
}

impl Sums {
    /// The lines of the tables (files at most two folders deep: `hosp/labevents.csv.gz`,
    /// `main_data/metadata_phase_1.csv`); copied folders' files are added by [`Self::add_folders`]
    /// once the cohort is known.
    pub(crate) fn load(config: &Config) -> Self {
        let tables = |rel: &[u8]| rel.iter().filter(|&&b| b == b'/').count() <= 1;
        let datasets = DatasetKey::ALL
            .into_iter()
            .map(|key| (key, DatasetSums::load_where(config.datasets.get(key), &tables)))
            .collect();
        Self { datasets }
    }

    /// Adds the lines of the files in the folders `folders` hands out (and below, for
    /// recursive ones): what a build copies for its cohort. `folders` calls its argument with
    /// each folder and whether its subfolders count too, once per dataset.
    pub(crate) fn add_folders(&mut self, folders: impl Fn(&mut dyn FnMut(&Path, bool))) {
        for sums in self.datasets.values_mut().filter(|d| d.present && d.error.is_none()) {
            // Folder keys, not paths: `--cohort cxr` copies from about 300,000 folders. A key
            // that collides only keeps a line the build will not look up.
            let (mut flat, mut deep) = (HashSet::new(), HashSet::new());
            folders(&mut |path, recursive| {
                let Ok(rel) = path.strip_prefix(&sums.folder) else { return };
                if rel.components().next().is_some() {
                    (if recursive { &mut deep } else { &mut flat }).insert(path_key(rel));
                }
            });
            if flat.is_empty() && deep.is_empty() {
                continue;
            }
            // A set lookup per ancestor: a mirror's checksum file has a million lines and a
            // cohort thousands of recursive folders.
            let keep = |rel: &[u8]| {
                use std::os::unix::ffi::OsStrExt;
                let rel = Path::new(std::ffi::OsStr::from_bytes(rel));
                rel.parent().is_some_and(|p| flat.contains(&path_key(p)))
                    || (!deep.is_empty() && rel.ancestors().skip(1).any(|a| deep.contains(&path_key(a))))
            };
            let before = sums.copied.len();
            let read = read_sums_file(
                &sums.folder,
                &keep,
                &mut |rel, d| {
                    use std::os::unix::ffi::OsStrExt;
                    sums.copied.push((path_key(&sums.folder.join(std::ffi::OsStr::from_bytes(rel))), d));
                },
                &mut |_| {},
            );
            // It was read when the tables' lines were: an error now is a file being replaced.
            if read.error.is_some() {
                sums.copied.truncate(before);
            }
            sums.copied.sort_unstable_by_key(|(key, _)| *key);
            sums.copied.shrink_to_fit();
        }
    }

    /// The dataset whose folder holds `path` (the deepest, should folders nest).
    pub(crate) fn dataset_of(&self, path: &Path) -> Option<DatasetKey> {
        self.datasets
            .iter()
            .filter(|(_, d)| path.starts_with(&d.folder))
            .max_by_key(|(_, d)| d.folder.components().count())
            .map(|(k, _)| *k)
    }

    /// The listed digest of `path`, if its dataset's checksum file lists it.
    pub(crate) fn expected(&self, path: &Path) -> Option<Digest> {
        let key = self.dataset_of(path)?;
        let sums = self.datasets.get(&key)?;
        if let Some(d) = sums.listed.get(path) {
            return Some(*d);
        }
        let key = path_key(path);
        sums.copied.binary_search_by_key(&key, |(k, _)| *k).ok().map(|i| sums.copied[i].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_physionet_and_coreutils_lines() {
        let d = "ab".repeat(32);
        let text = format!("{d} hosp/a.csv.gz\n{d}  two spaces.csv\n{d} *bin.csv\n\\{d} a\\\\b\\nc\n\n");
        let got = parse(text.as_bytes()).unwrap();
        let names: Vec<&[u8]> = got.iter().map(|(p, _)| p.as_slice()).collect();
        assert_eq!(names, [&b"hosp/a.csv.gz"[..], b"two spaces.csv", b"bin.csv", b"a\\b\nc"]);
        assert!(got.iter().all(|(_, x)| *x == [0xab; 32]));
        assert!(parse(b"xyz hosp/a.csv\n").unwrap_err().contains("line 1"));
        assert_eq!(format_line(&[0xab; 32], b"a\\b\nc"), format!("\\{d} a\\\\b\\nc\n").into_bytes());
        assert_eq!(format_line(&[0xab; 32], b"p/x.csv"), format!("{d} p/x.csv\n").into_bytes());
    }
}
