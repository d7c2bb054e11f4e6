//! Copied folders: chest X-ray study folders, reports, REFLACX readings and EyeGaze transcripts.
//!
//! Files are hard-linked (falling back to a copy across file systems) or copied into the job's
//! staging folder and published like any table. A file whose output is already the same (same
//! inode; for a copy, a source with the identity recorded when it was copied) is not staged
//! again, so a rebuild leaves it untouched. Symbolic links are followed only when their target
//! stays inside the input tree (a link back to a folder being walked is skipped), and
//! `index.html` files from wget mirrors are never copied. One entry that cannot be read is
//! skipped, named and counted; the rest is copied.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::config::{FilesMode, Profile};
use crate::ids::{ReflacxId, StudyId, SubjectId};
use crate::pipeline::fixer::reflacx;
use crate::pipeline::publish::CopyRecord;
use crate::pipeline::reader::SmallTable;
use crate::pipeline::writer::{JobError, TableCounts};
use crate::pipeline::{publish, BuildContext};

/// Folders nested deeper than this below a copied folder are not walked.
const MAX_DEPTH: usize = 32;

/// One folder job being assembled.
struct FolderJob<'a> {
    ctx: &'a BuildContext,
    key: &'static str,
    staging: PathBuf,
    input_root: PathBuf,
    files: Vec<PathBuf>,
    counts: TableCounts,
    /// (device, inode) of the folders being walked, outermost first: a link back to one of
    /// them would recurse without end.
    walking: Vec<(u64, u64)>,
    /// What each copy was made from, by the last publish of this job (empty with --full).
    copied_before: std::collections::BTreeMap<PathBuf, CopyRecord>,
    copies: std::collections::BTreeMap<PathBuf, CopyRecord>,
}

impl<'a> FolderJob<'a> {
    fn new(ctx: &'a BuildContext, key: &'static str) -> Self {
        let staging = publish::staging_dir(&ctx.config.output, key);
        let _ = fs::remove_dir_all(&staging);
        let _ = fs::create_dir_all(&staging);
        let input_root = fs::canonicalize(&ctx.config.input).unwrap_or_else(|_| ctx.config.input.clone());
        let copied_before = match ctx.force_full {
            true => Default::default(),
            false => publish::load_manifest(&ctx.config.output, key).map(|m| m.copies).unwrap_or_default(),
        };
        Self {
            ctx,
            key,
            staging,
            input_root,
            files: Vec::new(),
            counts: TableCounts::default(),
            walking: Vec::new(),
            copied_before,
            copies: Default::default(),
        }
    }

    /// Skips one entry that cannot be placed: named (escaped) in the log and counted.
    fn skip(&mut self, path: &Path, reason: &dyn std::fmt::Display) {
        tracing::warn!(job = self.key, path = ?path, %reason, "not copied");
        self.counts.read += 1;
        self.counts.rejected += 1;
    }

    fn err(&self, path: &Path) -> impl Fn(io::Error) -> JobError + '_ {
        let path = path.to_path_buf();
        move |cause| JobError::Write { path: path.clone(), cause }
    }

    /// Places every file under `src` (recursively) at `dest` (relative to the output root).
    fn folder(&mut self, src: &Path, dest: &Path) -> Result<(), JobError> {
        let Ok(meta) = fs::metadata(src) else { return Ok(()) };
        let id = (meta.dev(), meta.ino());
        if self.walking.contains(&id) {
            self.skip(src, &"a link back to a folder being copied");
            return Ok(());
        }
        if self.walking.len() >= MAX_DEPTH {
            self.skip(src, &format!("more than {MAX_DEPTH} folders deep"));
            return Ok(());
        }
        self.walking.push(id);
        let result = self.entries(src, dest);
        self.walking.pop();
        result
    }

    fn entries(&mut self, src: &Path, dest: &Path) -> Result<(), JobError> {
        for entry in sorted_entries(src) {
            let name = entry.file_name();
            if name.eq_ignore_ascii_case("index.html") {
                continue;
            }
            let path = entry.path();
            let Some(meta) = self.resolve(&path) else {
                continue;
            };
            if meta.is_dir() {
                self.folder(&path, &dest.join(&name))?;
            } else if meta.is_file() {
                self.file(&path, &dest.join(&name), None)?;
            }
        }
        Ok(())
    }

    /// Metadata of `path`, following a symbolic link only when it stays inside the input tree.
    fn resolve(&mut self, path: &Path) -> Option<fs::Metadata> {
        let meta = fs::symlink_metadata(path).ok()?;
        if !meta.file_type().is_symlink() {
            return Some(meta);
        }
        match fs::canonicalize(path) {
            Ok(target) if target.starts_with(&self.input_root) => fs::metadata(&target).ok(),
            _ => {
                tracing::warn!(path = %path.display(), "symbolic link leaves the input tree: not followed");
                self.counts.read += 1;
                self.counts.rejected += 1;
                None
            }
        }
    }

    /// Places one file; `content` replaces the source bytes (merged ellipses files).
    fn file(&mut self, src: &Path, dest: &Path, content: Option<Vec<u8>>) -> Result<(), JobError> {
        self.counts.read += 1;
        let final_path = self.ctx.config.output.join(dest);
        let staged = publish::staged_path(&self.staging, dest);
        let unchanged = match &content {
            Some(bytes) => fs::read(&final_path).is_ok_and(|old| &old == bytes),
            None => same_file(src, &final_path, self.ctx.config.files),
        };
        let unchanged = unchanged && (content.is_some() || self.kept_copy(src, dest));
        if !unchanged {
            let placed = match content {
                Some(bytes) => fs::write(&staged, bytes).map(|()| None),
                None => place(src, &staged, self.ctx.config.files),
            };
            match placed {
                Ok(Some(record)) => {
                    self.copies.insert(dest.to_path_buf(), record);
                }
                Ok(None) => {}
                // The output's file system failing fails the job; one unreadable entry does not.
                Err(e) if is_output_failure(&e) => return Err(self.err(&staged)(e)),
                Err(e) => {
                    self.counts.read -= 1;
                    self.skip(src, &e);
                    return Ok(());
                }
            }
        }
        self.files.push(dest.to_path_buf());
        self.counts.written += 1;
        Ok(())
    }

    /// A copy already in place is kept only if its source is the one it was copied from (a
    /// hard link needs no record: it is the source). Keeps the record for the next build.
    fn kept_copy(&mut self, src: &Path, dest: &Path) -> bool {
        let Ok(out) = fs::metadata(self.ctx.config.output.join(dest)) else { return false };
        let Ok(source) = fs::metadata(src) else { return false };
        if out.nlink() > 1 && out.ino() == source.ino() && out.dev() == source.dev() {
            return true;
        }
        match self.copied_before.get(dest) {
            Some(record) if record.same_source(&CopyRecord::identity(&source)) && record.size == out.len() => {
                self.copies.insert(dest.to_path_buf(), record.clone());
                true
            }
            _ => false,
        }
    }

    fn reject(&mut self, what: &str, error: &dyn std::fmt::Display) {
        tracing::warn!(job = self.key, what, %error, "id is not path-safe: not copied");
        self.counts.read += 1;
        self.counts.rejected += 1;
    }

    fn publish(self) -> Result<(String, TableCounts), JobError> {
        let mut files = self.files;
        files.sort();
        files.dedup();
        let manifest = publish::Manifest {
            job: self.key.to_string(),
            files,
            counts: self.counts,
            copies: self.copies,
            ..Default::default()
        };
        publish::publish(&self.ctx.config.output, manifest)
            .map_err(|cause| JobError::Write { path: self.ctx.config.output.clone(), cause })?;
        Ok((self.key.to_string(), self.counts))
    }
}

/// A folder's entries in name order (none when it does not exist).
fn sorted_entries(dir: &Path) -> Vec<fs::DirEntry> {
    let mut entries: Vec<_> = fs::read_dir(dir).map(|e| e.flatten().collect()).unwrap_or_default();
    entries.sort_by_key(|e| e.file_name());
    entries
}

/// Possibly in place: the same inode (hard link), or a file of the same size (a copy, which
/// `kept_copy` then checks against its record).
fn same_file(src: &Path, dest: &Path, mode: FilesMode) -> bool {
    let (Ok(s), Ok(d)) = (fs::metadata(src), fs::metadata(dest)) else {
        return false;
    };
    match mode {
        FilesMode::Hardlink if s.dev() == d.dev() && s.ino() == d.ino() => true,
        _ => s.len() == d.len(),
    }
}

/// Errors that say the output cannot be written at all (as opposed to one source entry).
fn is_output_failure(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EFBIG | libc::EROFS | libc::EDQUOT | libc::EIO))
}

/// Hard-links or copies `src` to `dest`; a copy returns its record.
fn place(src: &Path, dest: &Path, mode: FilesMode) -> io::Result<Option<CopyRecord>> {
    if mode == FilesMode::Hardlink && fs::hard_link(src, dest).is_ok() {
        return Ok(None);
    }
    copy_recorded(src, dest).map(Some)
}

/// Copies `src` to a new `dest` (mode 0640, not the source's) and records the source's
/// identity, taken before the copy, and the hash of the bytes copied.
fn copy_recorded(src: &Path, dest: &Path) -> io::Result<CopyRecord> {
    use std::io::{Read, Write};
    let mut input = fs::File::open(src)?;
    let mut record = CopyRecord::identity(&input.metadata()?);
    let mut output = fs::File::create(dest)?;
    let mut hash = crate::fingerprint::Fnv::default();
    let mut buf = vec![0u8; crate::source::CHUNK];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hash = hash.bytes(&buf[..n]);
        output.write_all(&buf[..n])?;
    }
    publish::set_output_mode(dest)?;
    record.fnv = format!("{:016x}", hash.finish());
    Ok(record)
}

/// `p<first 2 digits>/p<subject_id>`: the MIMIC-CXR folder of a subject.
fn cxr_subject_dir(subject: SubjectId) -> PathBuf {
    let s = subject.to_string();
    PathBuf::from(format!("p{}", &s[..2.min(s.len())])).join(format!("p{s}"))
}

/// A folder the build reads files from, for the daemon's watcher: its files, and with
/// `recursive` its subfolders' too.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WatchDir {
    pub path: PathBuf,
    pub recursive: bool,
}

/// Every folder this build reads: the table folders and the dataset roots (not recursive),
/// and the cohort's study, report, reading and transcript folders. It grows with the cohort
/// and the number of tables, never with the size of the mirror.
pub fn read_folders(ctx: &BuildContext) -> Vec<WatchDir> {
    let d = &ctx.config.datasets;
    let flat = |path: PathBuf| WatchDir { path, recursive: false };
    let mut dirs = table_folders(&ctx.config);
    for row in &ctx.links.cxr_rows {
        let sdir = cxr_subject_dir(row.subject);
        if let Some(study) = row.study {
            dirs.push(flat(d.mimic_cxr_jpg.join("files").join(&sdir).join(format!("s{study}"))));
        }
        dirs.push(flat(d.mimic_cxr.join("files").join(&sdir)));
    }
    for table in &ctx.reflacx_phases {
        let Ok(id_col) = table.require("id") else { continue };
        for row in &table.rows {
            if let Ok(id) = ReflacxId::parse(row.fields.get(id_col).map_or(&[][..], Vec::as_slice)) {
                dirs.push(flat(d.reflacx.join("main_data").join(id.as_str())));
                dirs.push(flat(d.reflacx.join("gaze_data").join(id.as_str())));
            }
        }
    }
    let transcripts = d.egd_cxr.join("audio_segmentation_transcripts");
    for dicom in &ctx.links.eye_gaze_dicoms {
        dirs.push(WatchDir { path: transcripts.join(dicom.as_str()), recursive: true });
    }
    dirs.sort();
    dirs.dedup();
    dirs
}

/// The folders holding tables, and the dataset roots: what a build reads before it knows the
/// cohort.
pub fn table_folders(config: &crate::config::Config) -> Vec<WatchDir> {
    let flat = |path: PathBuf| WatchDir { path, recursive: false };
    let mut dirs: Vec<WatchDir> = crate::input::table_folders(config).into_iter().map(flat).collect();
    dirs.extend(config.datasets.all().into_iter().map(|p| flat(p.clone())));
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Syncs every copied folder of the cohort.
pub fn sync_all(ctx: &BuildContext) -> Result<Vec<(String, TableCounts)>, JobError> {
    let d = &ctx.config.datasets;
    let mut done = Vec::new();

    // Chest X-ray study folders and their reports, for each study in a patient's subset rows.
    let studies: BTreeSet<(SubjectId, StudyId)> =
        ctx.links.cxr_rows.iter().filter_map(|r| r.study.map(|s| (r.subject, s))).collect();
    let mut jpg = FolderJob::new(ctx, "files/cxr-jpg");
    let mut reports = FolderJob::new(ctx, "files/cxr-reports");
    for (subject, study) in &studies {
        let sdir = cxr_subject_dir(*subject);
        jpg.folder(
            &d.mimic_cxr_jpg.join("files").join(&sdir).join(format!("s{study}")),
            &PathBuf::from(subject.folder()).join("CXR-JPG").join(format!("s{study}")),
        )?;
        let report = d.mimic_cxr.join("files").join(&sdir).join(format!("s{study}.txt"));
        if report.is_file() {
            reports.file(
                &report,
                &PathBuf::from(subject.folder()).join("CXR-DICOM").join(format!("s{study}.txt")),
                None,
            )?;
        }
    }
    done.push(jpg.publish()?);
    done.push(reports.publish()?);

    // REFLACX reading folders (ellipses merged in profile paper) and gaze samples.
    let mut readings = FolderJob::new(ctx, "files/reflacx");
    for table in &ctx.reflacx_phases {
        let phase = &table.path;
        let (id_col, s_col) = (table.require("id")?, table.require("subject_id")?);
        for row in &table.rows {
            let raw_id = row.fields.get(id_col).map_or(&[][..], Vec::as_slice);
            let id = match ReflacxId::parse(raw_id) {
                Ok(id) => id,
                Err(e) => {
                    readings.reject("REFLACX id", &format!("{}: line {}: {e}", phase.display(), row.line));
                    continue;
                }
            };
            let Ok(subject) = SubjectId::parse(row.fields.get(s_col).map_or(&[][..], Vec::as_slice)) else {
                continue;
            };
            let dest = PathBuf::from(subject.folder()).join("REFLACX");
            let main = d.reflacx.join("main_data").join(id.as_str());
            sync_reading(&mut readings, &main, &dest.join("main_data").join(id.as_str()), ctx.config.profile)?;
            let gaze = d.reflacx.join("gaze_data").join(id.as_str());
            readings.folder(&gaze, &dest.join("gaze_data").join(id.as_str()))?;
        }
    }
    done.push(readings.publish()?);

    // EyeGaze audio, transcript and mask folders of each patient's images.
    let mut transcripts = FolderJob::new(ctx, "files/eye-gaze-transcripts");
    let root = d.egd_cxr.join("audio_segmentation_transcripts");
    for dicom in &ctx.links.eye_gaze_dicoms {
        let Some(subject) = ctx.cohort.subject_of_dicom(dicom) else {
            continue;
        };
        transcripts.folder(
            &root.join(dicom.as_str()),
            &PathBuf::from(subject.folder()).join("EyeGaze/audio_segmentation_transcripts").join(dicom.as_str()),
        )?;
    }
    done.push(transcripts.publish()?);
    Ok(done)
}

/// One REFLACX reading folder: files copied, except the merged ellipses file in `paper`.
fn sync_reading(job: &mut FolderJob, src: &Path, dest: &Path, profile: Profile) -> Result<(), JobError> {
    if profile == Profile::Release {
        return job.folder(src, dest);
    }
    for entry in sorted_entries(src) {
        let name = entry.file_name();
        let path = entry.path();
        if name == "anomaly_location_ellipses.csv" && job.resolve(&path).is_some_and(|m| m.is_file()) {
            let table = SmallTable::read(&path)?;
            let crlf = fs::read(&path).is_ok_and(|b| b.windows(2).any(|w| w == b"\r\n"));
            let merged = reflacx::merge(&reflacx::Columns::of(&table), reflacx::any_true);
            job.file(&path, &dest.join(&name), Some(reflacx::encode(&merged, crlf)))?;
        } else if name.eq_ignore_ascii_case("index.html") {
            continue;
        } else if let Some(meta) = job.resolve(&path) {
            if meta.is_dir() {
                job.folder(&path, &dest.join(&name))?;
            } else {
                job.file(&path, &dest.join(&name), None)?;
            }
        }
    }
    Ok(())
}
