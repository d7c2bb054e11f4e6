//! PhysioNet's `SHA256SUMS.txt`: reading it, and what a build checked against it.
//!
//! Each dataset's version folder may hold a `SHA256SUMS.txt` (`<64 lower-case hex> <path>` per
//! file, LF; `physionet.md` §2). A build parses each one once ([`Sums::load`]); every table it
//! reads is hashed on its reading thread as it is read ([`crate::source`]) and every file it
//! copies as it is copied, and compared at the end of the read with the listed digest. Files not
//! listed are not checked. [`Integrity`] records per dataset what was read and what matched, for
//! the summary's provenance.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::config::Config;
use crate::digest::Recorder;
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
#[derive(Debug, Default)]
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
    pub(crate) fn load(folder: &Path) -> Self {
        Self::load_where(folder, &|_| true)
    }

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
#[derive(Debug, Default)]
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

/// What one dataset's reads came to, for the summary.
#[derive(Debug, Default, Clone)]
struct DatasetRecord {
    tables: BTreeSet<PathBuf>,
    /// Tables read whose checksum line could not be read or parsed.
    unverifiable: BTreeSet<PathBuf>,
    checked: u64,
    mismatched: BTreeSet<PathBuf>,
}

/// A build's checksum file lookups and what its reads and copies found.
#[derive(Debug, Default)]
pub(crate) struct Integrity {
    pub sums: Sums,
    record: Mutex<BTreeMap<DatasetKey, DatasetRecord>>,
    /// How copied folders' files were placed (links, copies, …).
    pub files: Mutex<crate::pipeline::counts::FileStats>,
}

/// A dataset in the summary's `datasets`: where it was read from and whether its download
/// matched its `SHA256SUMS.txt`.
#[derive(Debug, Clone, Serialize)]
pub struct Provenance {
    pub root: PathBuf,
    pub version: Option<String>,
    /// `verified`: every listed file this build read matched; `mismatch`: one did not;
    /// `unverifiable`: the file could not be read (see `sha256sums_error`) or a table read has
    /// a malformed line (see `unverifiable`); `absent`: no SHA256SUMS.txt.
    pub sha256sums: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256sums_error: Option<String>,
    /// Malformed lines in SHA256SUMS.txt (passed over; the others are checked).
    #[serde(skip_serializing_if = "is_zero")]
    pub sha256sums_malformed_lines: u64,
    /// Tables read unverified: their line could not be read or parsed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unverifiable: Vec<PathBuf>,
    /// Tables read from the dataset by this build.
    pub tables: usize,
    /// Files (tables and copies) hashed and compared with their listed digest by this build.
    pub checked: u64,
    /// Files whose bytes differ from their listed digest.
    pub mismatched: Vec<PathBuf>,
    /// A version folder newer than the one in use sits beside it (never switched to).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub newer_version: Option<String>,
}

impl Integrity {
    pub(crate) fn load(config: &Config) -> Arc<Self> {
        Arc::new(Self { sums: Sums::load(config), ..Default::default() })
    }

    /// A table about to be read: counted for its dataset; the check to make at the end of the
    /// read, when its dataset lists it.
    pub(crate) fn table(self: &Arc<Self>, path: &Path) -> Option<Expected> {
        let key = self.sums.dataset_of(path)?;
        let mut record = self.record.lock().unwrap_or_else(|e| e.into_inner());
        let r = record.entry(key).or_default();
        r.tables.insert(path.into());
        let sums = self.sums.datasets.get(&key)?;
        let listed = sums.listed.contains_key(path);
        if sums.error.is_some() || (!listed && sums.unverifiable.contains(path)) {
            tracing::warn!(table = %path.display(), "its SHA256SUMS.txt line cannot be read or parsed: read unverified");
            r.unverifiable.insert(path.into());
        }
        drop(record);
        self.file(path)
    }

    /// [`Self::table`] as the reader's option.
    pub(crate) fn table_check(self: &Arc<Self>, path: &Path) -> crate::source::Sha256Check {
        self.table(path).map_or(crate::source::Sha256Check::Off, crate::source::Sha256Check::Expect)
    }

    /// [`Self::file`] as the reader's option (a file read as a table but not counted as one).
    pub(crate) fn table_check_file(self: &Arc<Self>, path: &Path) -> crate::source::Sha256Check {
        self.file(path).map_or(crate::source::Sha256Check::Off, crate::source::Sha256Check::Expect)
    }

    /// The check for a file that is copied (not counted as a table).
    pub(crate) fn file(self: &Arc<Self>, path: &Path) -> Option<Expected> {
        let digest = self.sums.expected(path)?;
        Some(Expected::recorded(path, digest, Arc::clone(self) as Arc<dyn Recorder>))
    }
}

impl Recorder for Integrity {
    fn outcome(&self, path: &Path, matched: bool) {
        let Some(key) = self.sums.dataset_of(path) else { return };
        let mut record = self.record.lock().unwrap_or_else(|e| e.into_inner());
        let r = record.entry(key).or_default();
        r.checked += 1;
        if matched {
            r.mismatched.remove(path);
        } else {
            r.mismatched.insert(path.to_path_buf());
        }
    }
}

impl Integrity {
    /// Copied files that differed from their listed digest (tables fail on their own).
    pub(crate) fn mismatched_files(&self) -> Vec<PathBuf> {
        let record = self.record.lock().unwrap_or_else(|e| e.into_inner());
        record.values().flat_map(|r| r.mismatched.iter().filter(|p| !r.tables.contains(*p)).cloned()).collect()
    }

    /// The summary's `datasets`, keyed like `[datasets]`.
    pub(crate) fn provenance(&self, config: &Config) -> BTreeMap<&'static str, Provenance> {
        let record = self.record.lock().unwrap_or_else(|e| e.into_inner());
        DatasetKey::ALL
            .into_iter()
            .map(|key| {
                let r = record.get(&key).cloned().unwrap_or_default();
                let sums = self.sums.datasets.get(&key);
                let present = sums.is_some_and(|s| s.present);
                let readable = sums.is_some_and(|s| s.error.is_none());
                let status = match (present, readable && r.unverifiable.is_empty(), r.mismatched.is_empty()) {
                    (false, _, _) => "absent",
                    (true, _, false) => "mismatch",
                    (true, false, true) => "unverifiable",
                    (true, true, true) => "verified",
                };
                let version = config.datasets.versions.get(key).clone();
                let p = Provenance {
                    root: std::path::absolute(config.datasets.get(key))
                        .unwrap_or_else(|_| config.datasets.get(key).to_path_buf()),
                    newer_version: newer_version(config.datasets.get(key), version.as_deref()),
                    version,
                    sha256sums: status,
                    sha256sums_error: sums.and_then(|s| s.error.clone()),
                    sha256sums_malformed_lines: sums.map_or(0, |s| s.malformed),
                    unverifiable: r.unverifiable.into_iter().collect(),
                    tables: r.tables.len(),
                    checked: r.checked,
                    mismatched: r.mismatched.into_iter().collect(),
                };
                (key.config_key(), p)
            })
            .collect()
    }

    /// Warns about (and exports as a gauge) each dataset with a newer version folder beside the
    /// one in use. Never switches: the user pins versions.
    pub(crate) fn report_newer_versions(config: &Config) {
        for key in DatasetKey::ALL {
            let in_use = config.datasets.versions.get(key).as_deref();
            let newer = newer_version(config.datasets.get(key), in_use);
            if let (Some(newer), Some(in_use)) = (&newer, in_use) {
                tracing::warn!(
                    dataset = key.config_key(),
                    in_use,
                    newer = %newer,
                    "a newer version of {} sits beside the one in use; it is not used until [versions] {} = \"{newer}\"",
                    key.title(),
                    key.config_key()
                );
            }
            metrics::gauge!(crate::telemetry::NEWER_VERSION, "dataset" => key.config_key()).set(if newer.is_some() {
                1.0
            } else {
                0.0
            });
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The program that wrote an output, for the summary.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Program {
    pub name: &'static str,
    pub version: &'static str,
}

impl Program {
    pub(crate) fn this() -> Self {
        Self { name: env!("CARGO_PKG_NAME"), version: env!("CARGO_PKG_VERSION") }
    }
}

/// The settings an output was built with, for the summary.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub profile: &'static str,
    pub window_days: u32,
    pub index_column: bool,
    pub files: crate::config::FilesMode,
}

impl Settings {
    pub fn of(config: &Config) -> Self {
        Self {
            profile: config.profile.as_str(),
            window_days: config.window_days,
            index_column: config.index_column,
            files: config.files,
        }
    }
}

/// The newest version folder beside `folder` (a version folder named `in_use`) that is newer.
fn newer_version(folder: &Path, in_use: Option<&str>) -> Option<String> {
    let in_use = in_use?;
    let parent = folder.parent()?;
    let order = |v: &str| v.split('.').map(|p| p.parse::<u64>().unwrap_or(0)).collect::<Vec<_>>();
    let versions = crate::layout::version_folders(parent).ok()?;
    versions.into_iter().filter(|v| order(v) > order(in_use)).max_by_key(|v| order(v))
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
