//! A job's list of published files kept apart from its manifest, on disk, sorted: a copied
//! folder job of a `cxr` cohort places 377,000 images, and neither the job, nor the publish
//! that compares the list with the last one, nor the daemon's checkup holds them in memory.
//!
//! The list lives in `.mimic-eye/jobs/` beside the manifests, named after its job and a
//! nonce (`files__cxr-jpg.<nonce>.files`): a publish writes the new list under a new name,
//! records the name in the journal and then the manifest, and only then deletes the old one,
//! so a crash at any point leaves the list each record names. Paths are stored as their bytes,
//! each ended by a NUL (no Unix path holds one), in [`Path`] order without repeats, each
//! followed by its copy record ([`copy_record::encode`]; lists of earlier builds have none).

use std::cmp::Ordering;
use std::fs;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::pipeline::copy_record::{self, CopyRecord};
use crate::pipeline::outdir;
use crate::pipeline::paths::{job_file_name, state_dir};

/// Where a manifest's files are listed apart, and how many.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ListRef {
    /// File name in `.mimic-eye/jobs/`.
    pub name: String,
    pub count: u64,
    /// Each path is followed by its copy record (false in lists of earlier builds).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub records: bool,
}

const SUFFIX: &str = ".files";

fn jobs_dir(output: &Path) -> PathBuf {
    state_dir(output).join("jobs")
}

/// Writes a job's list as its files are placed. Paths that come in order are streamed to disk;
/// if one comes out of order (the jobs walk in path order: not expected) the list is sorted
/// once at the end.
pub(crate) struct ListWriter {
    path: PathBuf,
    name: String,
    out: BufWriter<fs::File>,
    last: Vec<u8>,
    sorted: bool,
    count: u64,
}

impl ListWriter {
    /// A new, empty list for `job` under `output`.
    pub(crate) fn create(output: &Path, job: &str) -> io::Result<Self> {
        let dir = jobs_dir(output);
        fs::create_dir_all(&dir)?;
        let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let name = format!("{}.{:x}{:x}{SUFFIX}", job_file_name(job), std::process::id(), nonce);
        let path = dir.join(&name);
        let file = fs::OpenOptions::new().write(true).create_new(true).mode(0o640).open(&path)?;
        let out = BufWriter::with_capacity(1 << 16, file);
        Ok(Self { path, name, out, last: Vec::new(), sorted: true, count: 0 })
    }

    /// The list's own path (for errors).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Adds `rel`, with the record of the copy placed there if it is one; the same path as
    /// the one before is not repeated.
    pub(crate) fn push(&mut self, rel: &Path, copy: Option<&CopyRecord>) -> io::Result<()> {
        let bytes = rel.as_os_str().as_bytes();
        if self.count > 0 && self.sorted {
            match Path::new(std::ffi::OsStr::from_bytes(&self.last)).cmp(rel) {
                Ordering::Equal => return Ok(()),
                Ordering::Greater => self.sorted = false,
                Ordering::Less => {}
            }
        }
        self.out.write_all(bytes)?;
        self.out.write_all(&[0])?;
        copy_record::encode(copy, &mut self.out)?;
        self.last.clear();
        self.last.extend_from_slice(bytes);
        self.count += 1;
        Ok(())
    }

    /// Completes the list (sorted, without repeats) and names it for the manifest.
    pub(crate) fn finish(self) -> io::Result<ListRef> {
        let Self { path, name, out, sorted, mut count, .. } = self;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        drop(file);
        if !sorted {
            let mut reader = ListReader::open(&path, true)?;
            let mut all = Vec::new();
            while let Some(entry) = reader.next_entry() {
                all.push(entry?);
            }
            all.sort_by(|a, b| a.0.cmp(&b.0));
            all.dedup_by(|a, b| a.0 == b.0);
            let mut out = BufWriter::new(fs::File::create(&path)?);
            for (rel, copy) in &all {
                out.write_all(rel.as_os_str().as_bytes())?;
                out.write_all(&[0])?;
                copy_record::encode(copy.as_ref(), &mut out)?;
            }
            out.into_inner().map_err(|e| e.into_error())?;
            count = all.len() as u64;
        }
        Ok(ListRef { name, count, records: true })
    }
}

/// Reads a list back, one path at a time (as an iterator), or a path and its copy record.
pub(crate) struct ListReader {
    input: BufReader<fs::File>,
    buf: Vec<u8>,
    records: bool,
}

impl ListReader {
    /// The list at `path`, whose paths are followed by copy records if `records`.
    fn open(path: &Path, records: bool) -> io::Result<Self> {
        let file = fs::File::open(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Ok(Self { input: BufReader::with_capacity(1 << 16, file), buf: Vec::new(), records })
    }

    /// The list `list` of the output `output`.
    pub(crate) fn of(output: &Path, list: &ListRef) -> io::Result<Self> {
        outdir::check_state_name(&list.name)?;
        Self::open(&jobs_dir(output).join(&list.name), list.records)
    }

    /// The next path and the record of the copy placed there (none for a link or a list of an
    /// earlier build).
    pub(crate) fn next_entry(&mut self) -> Option<io::Result<(PathBuf, Option<CopyRecord>)>> {
        self.buf.clear();
        match self.input.read_until(0, &mut self.buf) {
            Ok(0) => None,
            Ok(_) => {
                if self.buf.pop() != Some(0) {
                    return Some(Err(io::Error::new(io::ErrorKind::UnexpectedEof, "a file list ends mid-path")));
                }
                let rel = PathBuf::from(std::ffi::OsStr::from_bytes(&self.buf));
                let rel = match outdir::checked_rel(rel, "a file list") {
                    Ok(rel) => rel,
                    Err(e) => return Some(Err(e)),
                };
                match self.records {
                    true => Some(copy_record::decode(&mut self.input).map(|copy| (rel, copy))),
                    false => Some(Ok((rel, None))),
                }
            }
            Err(e) => Some(Err(e)),
        }
    }
}

impl Iterator for ListReader {
    type Item = io::Result<PathBuf>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_entry().map(|entry| entry.map(|(rel, _)| rel))
    }
}

/// The copy records of a job's last list, looked up in the order the job places its files
/// (path order): a cursor moving forward through the list, so a job of 377,000 copies keeps
/// one record in memory. Looking up an earlier path starts again from the top.
pub(crate) struct RecordCursor {
    path: PathBuf,
    reader: CursorState,
    /// The entry the reader is on (the first at or after the last path looked up).
    current: Option<(PathBuf, Option<CopyRecord>)>,
    last: PathBuf,
}

enum CursorState {
    Unopened,
    /// Could not be opened or read: no records (the files are copied again).
    Failed,
    Open(ListReader),
}

impl RecordCursor {
    /// A cursor over `list` of `output` (a list without records finds none).
    pub(crate) fn new(output: &Path, list: &ListRef) -> Option<Self> {
        (list.records && outdir::check_state_name(&list.name).is_ok()).then(|| Self {
            path: jobs_dir(output).join(&list.name),
            reader: CursorState::Unopened,
            current: None,
            last: PathBuf::new(),
        })
    }

    /// The record listed for `rel`, if any. A list that cannot be read has none: the file is
    /// copied again.
    pub(crate) fn get(&mut self, rel: &Path) -> Option<CopyRecord> {
        if matches!(self.reader, CursorState::Unopened) || rel < self.last.as_path() {
            self.reader = ListReader::open(&self.path, true).map_or(CursorState::Failed, CursorState::Open);
            self.current = None;
        }
        self.last.as_mut_os_string().clear();
        self.last.push(rel);
        let CursorState::Open(reader) = &mut self.reader else { return None };
        loop {
            match &self.current {
                Some((at, copy)) if at == rel => return copy.clone(),
                Some((at, _)) if at.as_path() > rel => return None,
                _ => {}
            }
            match reader.next_entry() {
                Some(Ok(entry)) => self.current = Some(entry),
                None => {
                    self.current = None;
                    return None;
                }
                // Not read past: what follows a damaged entry is not where it seems.
                Some(Err(_)) => {
                    self.reader = CursorState::Failed;
                    self.current = None;
                    return None;
                }
            }
        }
    }
}

/// Deletes a list no record names any more.
pub(crate) fn remove(output: &Path, list: &ListRef) {
    if outdir::check_state_name(&list.name).is_err() {
        return;
    }
    let _ = fs::remove_file(jobs_dir(output).join(&list.name));
}

/// Deletes the lists their job's manifest does not name (left by a job that failed, or by a
/// crash between a manifest and the deletion of the list it replaced). `named` gives the list
/// a job's manifest names, by the job's file name; only jobs with a list are looked up.
pub(crate) fn remove_unnamed(output: &Path, named: impl Fn(&str) -> Option<String>) {
    let Ok(entries) = fs::read_dir(jobs_dir(output)) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(job) = name.strip_suffix(SUFFIX).and_then(|n| n.rsplit_once('.')).map(|(job, _)| job) else {
            continue;
        };
        if named(job).as_deref() != Some(name) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// The paths of `old` that are not in `new`, both in [`Path`] order without repeats, merged:
/// memory does not grow with the lists.
pub(crate) fn each_missing(
    old: impl Iterator<Item = io::Result<PathBuf>>,
    new: impl Iterator<Item = io::Result<PathBuf>>,
    mut missing: impl FnMut(&Path) -> io::Result<()>,
) -> io::Result<()> {
    let mut new = new;
    let mut next_new = new.next().transpose()?;
    for old in old {
        let old = old?;
        while next_new.as_ref().is_some_and(|n| *n < old) {
            next_new = new.next().transpose()?;
        }
        if next_new.as_ref() != Some(&old) {
            missing(&old)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(v: &[&str]) -> Vec<io::Result<PathBuf>> {
        v.iter().map(|s| Ok(PathBuf::from(s))).collect()
    }

    #[test]
    fn a_list_written_out_of_order_reads_back_sorted_without_repeats() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ListWriter::create(dir.path(), "files/reflacx").unwrap();
        for p in ["b/x", "a/z", "a/z", "a/b.txt", "a/b/c", "b/x"] {
            w.push(Path::new(p), None).unwrap();
        }
        let list = w.finish().unwrap();
        assert!(list.name.starts_with("files__reflacx.") && list.name.ends_with(".files"));
        let back: Vec<PathBuf> = ListReader::of(dir.path(), &list).unwrap().map(Result::unwrap).collect();
        // Path order: a component at a time ("a/b/c" before "a/b.txt").
        assert_eq!(back, ["a/b/c", "a/b.txt", "a/z", "b/x"].map(PathBuf::from));
        assert_eq!(list.count, 4);
    }

    #[test]
    fn in_order_repeats_are_dropped_as_they_come() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ListWriter::create(dir.path(), "j").unwrap();
        for p in ["p/1", "p/1", "p/2"] {
            w.push(Path::new(p), None).unwrap();
        }
        let list = w.finish().unwrap();
        assert_eq!(list.count, 2);
        assert_eq!(ListReader::of(dir.path(), &list).unwrap().count(), 2);
    }

    #[test]
    fn missing_names_what_only_the_old_list_holds() {
        let mut gone = Vec::new();
        let old = paths(&["a/1", "a/2", "b/1", "c/1", "d/9"]);
        let new = paths(&["a/0", "a/2", "c/1", "c/2"]);
        each_missing(old.into_iter(), new.into_iter(), |p| {
            gone.push(p.to_path_buf());
            Ok(())
        })
        .unwrap();
        assert_eq!(gone, ["a/1", "b/1", "d/9"].map(PathBuf::from));
    }

    fn record(ino: u64) -> CopyRecord {
        CopyRecord { sha256: crate::sums::hex(&[ino as u8; 32]), copy_ino: ino, ..Default::default() }
    }

    #[test]
    fn copy_records_follow_their_paths_and_are_found_in_any_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ListWriter::create(dir.path(), "files/cxr-jpg").unwrap();
        // Out of order: the sort at the end keeps each path's record with it.
        for (p, ino) in [("b/2", 2), ("a/1", 1), ("b/3", 0), ("c/4", 4)] {
            w.push(Path::new(p), (ino != 0).then(|| record(ino)).as_ref()).unwrap();
        }
        let list = w.finish().unwrap();
        assert!(list.records);
        let mut reader = ListReader::of(dir.path(), &list).unwrap();
        let first = reader.next_entry().unwrap().unwrap();
        assert_eq!(first, (PathBuf::from("a/1"), Some(record(1))));
        assert_eq!(reader.count(), 3, "the paths after it, records skipped");

        let mut cursor = RecordCursor::new(dir.path(), &list).unwrap();
        assert_eq!(cursor.get(Path::new("a/0")), None);
        assert_eq!(cursor.get(Path::new("a/1")), Some(record(1)));
        assert_eq!(cursor.get(Path::new("b/3")), None, "a link: no record");
        assert_eq!(cursor.get(Path::new("c/4")), Some(record(4)));
        assert_eq!(cursor.get(Path::new("d")), None, "past the end");
        assert_eq!(cursor.get(Path::new("b/2")), Some(record(2)), "an earlier path: from the top again");
        // A list of an earlier build, without records, finds none.
        let old = ListRef { records: false, ..list };
        assert!(RecordCursor::new(dir.path(), &old).is_none());
    }

    #[test]
    fn lists_no_record_names_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let keep = ListWriter::create(dir.path(), "a").unwrap().finish().unwrap();
        let orphan = ListWriter::create(dir.path(), "b").unwrap().finish().unwrap();
        let named = |job: &str| (job == "a").then(|| keep.name.clone());
        remove_unnamed(dir.path(), named);
        assert!(jobs_dir(dir.path()).join(&keep.name).exists());
        assert!(!jobs_dir(dir.path()).join(&orphan.name).exists());
    }
}
