//! Copied folders: chest X-ray study folders, reports, REFLACX readings and EyeGaze transcripts.
//!
//! Files are hard-linked (falling back to a copy across file systems) or copied into the job's
//! staging folder and published like any table. A file whose output is already the same (same
//! inode; for a copy, a source with the identity recorded when it was copied) is not staged
//! again, so a rebuild leaves it untouched. Symbolic links are followed only when their target
//! stays inside the input tree (a link back to a folder being walked is skipped), and
//! `index.html` files from wget mirrors are never copied. One entry that cannot be read is
//! skipped, named and counted; the rest is copied. A copy (or clone) is hashed with SHA-256
//! while it is made and, when its dataset's SHA256SUMS.txt lists the source, compared with it: a
//! mismatch keeps the previous copy (if any) and fails the build.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::config::{FilesMode, Profile};
use crate::ids::{ReflacxId, SubjectId};
use crate::pipeline::context::BuildContext;
use crate::pipeline::counts::TableCounts;
use crate::pipeline::error::{At, JobError};
use crate::pipeline::file_list::ListWriter;
use crate::pipeline::fixer::reflacx;
use crate::pipeline::paths;
use crate::pipeline::publish;
use crate::pipeline::publish::CopyRecord;
use crate::pipeline::reader::SmallTable;
use copied_before::CopiedBefore;

mod copied_before;
mod place;
mod read_set;
mod reports;

use place::{copy_recorded, is_mismatch, is_output_failure, is_unsupported, link_target, reflink, same_file, Placed};
pub(crate) use read_set::{each_copied_folder, read_folders, table_folders, WatchDir};

/// Folders nested deeper than this below a copied folder are not walked.
const MAX_DEPTH: usize = 32;

/// A file already in place that the build leaves as it is.
enum Kept {
    /// A hard link, a symbolic link or a written file: nothing to record.
    Unrecorded,
    /// A copy, with its record for the next build.
    Copy(CopyRecord),
}

impl Kept {
    fn record(&self) -> Option<&CopyRecord> {
        match self {
            Kept::Unrecorded => None,
            Kept::Copy(record) => Some(record),
        }
    }

    fn into_record(self) -> Option<CopyRecord> {
        match self {
            Kept::Unrecorded => None,
            Kept::Copy(record) => Some(record),
        }
    }
}

/// One folder job being assembled.
struct FolderJob<'a> {
    ctx: &'a BuildContext,
    key: &'static str,
    staging: PathBuf,
    input_root: PathBuf,
    /// What the job placed, with the records of its copies, streamed to disk (377,000 images
    /// in a `cxr` cohort).
    list: ListWriter,
    counts: TableCounts,
    /// (device, inode) of the folders being walked, outermost first: a link back to one of
    /// them would recurse without end.
    walking: Vec<(u64, u64)>,
    /// What each copy was made from, by the last publish of this job (nothing with --full).
    copied_before: CopiedBefore,
}

impl<'a> FolderJob<'a> {
    fn new(ctx: &'a BuildContext, key: &'static str) -> Result<Self, JobError> {
        let staging = paths::staging_dir(&ctx.config.output, key);
        let _ = fs::remove_dir_all(&staging);
        let _ = fs::create_dir_all(&staging);
        let input_root = fs::canonicalize(&ctx.config.input).unwrap_or_else(|_| ctx.config.input.clone());
        let copied_before = match ctx.force_full {
            true => CopiedBefore::Nothing,
            false => CopiedBefore::load(&ctx.config.output, key),
        };
        let list = ListWriter::create(&ctx.config.output, key).at(&paths::state_dir(&ctx.config.output))?;
        Ok(Self {
            ctx,
            key,
            staging,
            input_root,
            list,
            counts: TableCounts::default(),
            walking: Vec::new(),
            copied_before,
        })
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
        // A stop ends the walk between folders (a `cxr` cohort has 227,000 study folders).
        if self.ctx.cancel.is_cancelled() {
            return Err(JobError::Cancelled);
        }
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
        let mode = self.ctx.config.files;
        let final_path = self.ctx.config.output.join(dest);
        let staged = paths::staged_path(&self.staging, dest);
        let final_is_link = fs::symlink_metadata(&final_path).is_ok_and(|m| m.file_type().is_symlink());
        // What is in place and left as it is, if anything.
        let mut kept: Option<Kept> = None;
        let unchanged = match (&content, mode) {
            (Some(bytes), _) => !final_is_link && fs::read(&final_path).is_ok_and(|old| &old == bytes),
            (None, FilesMode::Symlink) => {
                final_is_link && fs::read_link(&final_path).is_ok_and(|t| t == link_target(src)) && final_path.exists()
            }
            (None, _) if !final_is_link && same_file(src, &final_path, mode) => {
                kept = self.kept_copy(src, dest);
                kept.is_some()
            }
            (None, _) => false,
        };
        let placed = if unchanged {
            let kept = kept.get_or_insert(Kept::Unrecorded);
            Ok(self.classify(src, &final_path, content.is_some(), kept.record()))
        } else {
            match content {
                Some(bytes) => fs::write(&staged, bytes).map(|()| Placed::Written),
                None => self.place(src, &staged),
            }
        };
        let placed = match placed {
            Ok(p) => p,
            // The output's file system failing fails the job; one unreadable entry does not.
            Err(e) if is_output_failure(&e) => return Err(self.err(&staged)(e)),
            Err(e) if is_mismatch(&e) => {
                let _ = fs::remove_file(&staged);
                tracing::error!(job = self.key, file = %src.display(), "{}; the previous copy (if any) is kept", crate::sums::MISMATCH);
                // Keep what the last build placed, if anything.
                match self.copied_before.get(dest) {
                    Some(record) if final_path.is_file() => {
                        let placed = self.classify(src, &final_path, false, Some(&record));
                        kept = Some(Kept::Copy(record));
                        placed
                    }
                    _ => {
                        self.counts.read -= 1;
                        self.skip(src, &e);
                        return Ok(());
                    }
                }
            }
            Err(e) => {
                let _ = fs::remove_file(&staged);
                self.counts.read -= 1;
                self.skip(src, &e);
                return Ok(());
            }
        };
        let copy = self.count(src, placed, kept);
        if let Err(cause) = self.list.push(dest, copy.as_ref()) {
            return Err(JobError::Write { path: self.list.path().to_path_buf(), cause });
        }
        self.counts.written += 1;
        Ok(())
    }

    /// Counts how a file was placed, for the summary; `kept` is `Some` for a file left as it
    /// was. Returns the copy record to list with the file: a kept file's own (never the bare
    /// source identity `classify` makes up when a copy in place has none), a new copy's.
    fn count(&self, src: &Path, placed: Placed, kept: Option<Kept>) -> Option<CopyRecord> {
        let bytes = fs::metadata(src).map_or(0, |m| m.len());
        let mut stats = self.ctx.integrity.files.lock().unwrap_or_else(|e| e.into_inner());
        stats.kept += u64::from(kept.is_some());
        match placed {
            Placed::Linked => {
                (stats.linked, stats.linked_bytes) = (stats.linked + 1, stats.linked_bytes + bytes);
                None
            }
            Placed::Copied(record) | Placed::Reflinked(record) => {
                stats.count_copy(record.reflink, bytes);
                match kept {
                    Some(kept) => kept.into_record(),
                    None => Some(record),
                }
            }
            Placed::Symlinked => {
                stats.symlinked += 1;
                None
            }
            Placed::Written => {
                stats.written += 1;
                None
            }
        }
    }

    /// How a file already in place (and kept) was placed, for the summary's counts; `record`
    /// is the record of its copy, if it is one.
    fn classify(&self, src: &Path, out: &Path, content: bool, record: Option<&CopyRecord>) -> Placed {
        if content {
            return Placed::Written;
        }
        if fs::symlink_metadata(out).is_ok_and(|m| m.file_type().is_symlink()) {
            return Placed::Symlinked;
        }
        let (Ok(o), Ok(s)) = (fs::metadata(out), fs::metadata(src)) else { return Placed::Written };
        if o.ino() == s.ino() && o.dev() == s.dev() {
            return Placed::Linked;
        }
        match record {
            Some(r) if r.reflink => Placed::Reflinked(r.clone()),
            Some(r) => Placed::Copied(r.clone()),
            None => Placed::Copied(CopyRecord::identity(&s)),
        }
    }

    /// Links, clones or copies `src` to `dest` as `files` says, falling back to a copy (the
    /// first failure of a link or clone is logged once per build and kept for the summary).
    fn place(&mut self, src: &Path, dest: &Path) -> io::Result<Placed> {
        let expected = self.ctx.integrity.file(src);
        match self.ctx.config.files {
            FilesMode::Hardlink => match fs::hard_link(src, dest) {
                Ok(()) => return Ok(Placed::Linked),
                Err(e) => self.link_failed("hard link", &e),
            },
            FilesMode::Symlink => {
                std::os::unix::fs::symlink(link_target(src), dest)?;
                return Ok(Placed::Symlinked);
            }
            FilesMode::Reflink => match reflink(src, dest, expected.as_ref()) {
                Ok(record) => return Ok(Placed::Reflinked(record)),
                Err(e) if is_unsupported(&e) => {
                    let _ = fs::remove_file(dest);
                    self.link_failed("copy-on-write clone", &e);
                }
                Err(e) => return Err(e),
            },
            FilesMode::Copy => {}
        }
        copy_recorded(src, dest, expected.as_ref()).map(Placed::Copied)
    }

    fn link_failed(&self, what: &str, e: &io::Error) {
        let mut stats = self.ctx.integrity.files.lock().unwrap_or_else(|e| e.into_inner());
        if stats.link_failure.is_none() {
            let reason = format!("{what} failed: {e}");
            tracing::warn!(
                reason = %reason,
                "files are copied instead of linked (said once per build); a service user that does not own the downloads cannot hard-link them under fs.protected_hardlinks = 1: own them, or set files = \"copy\", \"reflink\" or \"symlink\""
            );
            stats.link_failure = Some(reason);
        }
    }

    /// A copy already in place is kept only if its source is the one it was copied from and
    /// the digest recorded when it was copied is the one the dataset's SHA256SUMS.txt lists
    /// now, if it lists the file (a hard link needs no record: it is the source). `Some` when
    /// kept.
    fn kept_copy(&mut self, src: &Path, dest: &Path) -> Option<Kept> {
        let out = fs::metadata(self.ctx.config.output.join(dest)).ok()?;
        let source = fs::metadata(src).ok()?;
        if out.nlink() > 1 && out.ino() == source.ino() && out.dev() == source.dev() {
            // A hard link is the source itself; in the other modes it must be replaced.
            return (self.ctx.config.files == FilesMode::Hardlink).then_some(Kept::Unrecorded);
        }
        let want_reflink = self.ctx.config.files == FilesMode::Reflink;
        // A copy whose digest differs from a new listing is made again, and checked then.
        let listed = self.ctx.integrity.file(src).map(|expected| expected.digest());
        self.copied_before
            .get(dest)
            .filter(|record| {
                record.same_source(&CopyRecord::identity(&source))
                    && record.source.size == out.len()
                    && (record.reflink == want_reflink || !want_reflink)
                    && listed.is_none_or(|digest| crate::sums::parse_hex(&record.sha256) == Some(digest))
            })
            .map(Kept::Copy)
    }

    fn reject(&mut self, what: &str, error: &dyn std::fmt::Display) {
        tracing::warn!(job = self.key, what, %error, "id is not path-safe: not copied");
        self.counts.read += 1;
        self.counts.rejected += 1;
    }

    fn publish(self) -> Result<(String, TableCounts), JobError> {
        let list_path = self.list.path().to_path_buf();
        let list = self.list.finish().at(&list_path)?;
        let manifest = publish::Manifest {
            job: self.key.to_string(),
            counts: self.counts,
            file_list: Some(list),
            ..Default::default()
        };
        publish::publish(&self.ctx.config.output, manifest).at(&self.ctx.config.output)?;
        Ok((self.key.to_string(), self.counts))
    }
}

/// A folder's entries in name order (none when it does not exist).
fn sorted_entries(dir: &Path) -> Vec<fs::DirEntry> {
    let mut entries: Vec<_> = fs::read_dir(dir).map(|e| e.flatten().collect()).unwrap_or_default();
    entries.sort_by_key(|e| e.file_name());
    entries
}

/// Syncs every copied folder of the cohort.
pub(crate) fn sync_all(ctx: &BuildContext) -> Result<Vec<(String, TableCounts)>, JobError> {
    let mut done = sync_studies(ctx)?;
    done.push(sync_readings(ctx)?);
    done.push(sync_transcripts(ctx)?);
    Ok(done)
}

/// Chest X-ray study folders and their reports, for each study of the subset.
fn sync_studies(ctx: &BuildContext) -> Result<Vec<(String, TableCounts)>, JobError> {
    let d = &ctx.config.datasets;
    let mut jpg = FolderJob::new(ctx, "files/cxr-jpg")?;
    let mut reports = FolderJob::new(ctx, "files/cxr-reports")?;
    let mut source = reports::Reports::open(crate::input::ReportsForm::of(&ctx.config), &ctx.integrity)?;
    for (subject, study) in &ctx.links.studies {
        let sdir = crate::input::cxr_subject_dir(*subject);
        jpg.folder(
            &d.mimic_cxr_jpg.join("files").join(&sdir).join(format!("s{study}")),
            &PathBuf::from(subject.folder()).join("CXR-JPG").join(format!("s{study}")),
        )?;
        let dest = PathBuf::from(subject.folder()).join("CXR-DICOM").join(format!("s{study}.txt"));
        match source.get(*subject, *study)? {
            Some(reports::Report::File(report)) => reports.file(&report, &dest, None)?,
            Some(reports::Report::Bytes(bytes)) => reports.file(&source.path(), &dest, Some(bytes))?,
            None => {}
        }
    }
    Ok(vec![jpg.publish()?, reports.publish()?])
}

/// REFLACX reading folders (ellipses merged in profile paper) and gaze samples, walked in the
/// order of their output paths (the tables list readings in another): the job's file list is
/// then written in order, and the last build's copy records read forward.
fn sync_readings(ctx: &BuildContext) -> Result<(String, TableCounts), JobError> {
    let d = &ctx.config.datasets;
    let mut readings = FolderJob::new(ctx, "files/reflacx")?;
    let mut walks: Vec<(PathBuf, PathBuf, bool)> = Vec::new();
    for table in &ctx.reflacx_phases {
        let phase = &table.path;
        let (id_col, s_col) = (table.require("id")?, table.require("subject_id")?);
        for row in &table.rows {
            let raw_id = row.fields.field(id_col);
            let id = match ReflacxId::parse(raw_id) {
                Ok(id) => id,
                Err(e) => {
                    readings.reject("REFLACX id", &format!("{}: line {}: {e}", phase.display(), row.line));
                    continue;
                }
            };
            let subject = SubjectId::parse(row.fields.field(s_col));
            // A reading of a subject outside the cohort (a subjects-file cohort) is not copied.
            let Some(subject) = subject.ok().filter(|s| ctx.cohort.contains(*s)) else {
                continue;
            };
            let dest = PathBuf::from(subject.folder()).join("REFLACX");
            for (part, is_main) in [("main_data", true), ("gaze_data", false)] {
                walks.push((dest.join(part).join(id.as_str()), d.reflacx.join(part).join(id.as_str()), is_main));
            }
        }
    }
    walks.sort_unstable();
    walks.dedup();
    for (dest, src, is_main) in &walks {
        match is_main {
            true => sync_reading(&mut readings, src, dest, ctx.config.profile)?,
            false => readings.folder(src, dest)?,
        }
    }
    readings.publish()
}

/// EyeGaze audio, transcript and mask folders of each patient's images, in output path order.
fn sync_transcripts(ctx: &BuildContext) -> Result<(String, TableCounts), JobError> {
    let mut transcripts = FolderJob::new(ctx, "files/eye-gaze-transcripts")?;
    let root = ctx.config.datasets.egd_cxr.join("audio_segmentation_transcripts");
    let mut walks: Vec<(PathBuf, PathBuf)> = Vec::new();
    for dicom in &ctx.links.eye_gaze_dicoms {
        let Some(subject) = ctx.cohort.subject_of_dicom(dicom) else {
            continue;
        };
        let dest = PathBuf::from(subject.folder()).join("EyeGaze/audio_segmentation_transcripts").join(dicom.as_str());
        walks.push((dest, root.join(dicom.as_str())));
    }
    walks.sort_unstable();
    for (dest, src) in &walks {
        transcripts.folder(src, dest)?;
    }
    transcripts.publish()
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
            let table =
                SmallTable::read_checked(&path, job.ctx.integrity.table_check_file(&path), &job.ctx.cancel, |_, _| {
                    true
                })?;
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
