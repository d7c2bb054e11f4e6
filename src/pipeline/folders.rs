//! Copied folders: chest X-ray study folders, reports, REFLACX readings and EyeGaze transcripts.
//!
//! Files are hard-linked (falling back to a copy across file systems) or copied into the job's
//! staging folder and published like any table. A file whose output is already the same (same
//! inode, or same size and not older) is not staged again, so a rebuild leaves it untouched.
//! Symbolic links are followed only when their target stays inside the input tree, and
//! `index.html` files from wget mirrors are never copied.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::config::{FilesMode, Profile};
use crate::ids::{ReflacxId, StudyId, SubjectId};
use crate::pipeline::fixer::reflacx;
use crate::pipeline::reader::SmallTable;
use crate::pipeline::writer::{JobError, TableCounts};
use crate::pipeline::{publish, BuildContext};

/// One folder job being assembled.
struct FolderJob<'a> {
    ctx: &'a BuildContext,
    key: &'static str,
    staging: PathBuf,
    input_root: PathBuf,
    files: Vec<PathBuf>,
    counts: TableCounts,
}

impl<'a> FolderJob<'a> {
    fn new(ctx: &'a BuildContext, key: &'static str) -> Self {
        let staging = publish::staging_dir(&ctx.config.output, key);
        let _ = fs::remove_dir_all(&staging);
        let _ = fs::create_dir_all(&staging);
        let input_root = fs::canonicalize(&ctx.config.input).unwrap_or_else(|_| ctx.config.input.clone());
        Self { ctx, key, staging, input_root, files: Vec::new(), counts: TableCounts::default() }
    }

    fn err(&self, path: &Path) -> impl Fn(io::Error) -> JobError + '_ {
        let path = path.to_path_buf();
        move |cause| JobError::Write { path: path.clone(), cause }
    }

    /// Places every file under `src` (recursively) at `dest` (relative to the output root).
    fn folder(&mut self, src: &Path, dest: &Path) -> Result<(), JobError> {
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
        if !unchanged {
            match content {
                Some(bytes) => fs::write(&staged, bytes).map_err(self.err(&staged))?,
                None => place(src, &staged, self.ctx.config.files).map_err(self.err(src))?,
            }
        }
        self.files.push(dest.to_path_buf());
        self.counts.written += 1;
        Ok(())
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
        let manifest =
            publish::Manifest { job: self.key.to_string(), files, counts: self.counts, ..Default::default() };
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

/// Already in place: the same inode (hard link), or a copy of the same size that is not older.
fn same_file(src: &Path, dest: &Path, mode: FilesMode) -> bool {
    let (Ok(s), Ok(d)) = (fs::metadata(src), fs::metadata(dest)) else {
        return false;
    };
    match mode {
        FilesMode::Hardlink if s.dev() == d.dev() => s.ino() == d.ino(),
        _ => s.len() == d.len() && d.mtime() >= s.mtime(),
    }
}

fn place(src: &Path, dest: &Path, mode: FilesMode) -> io::Result<()> {
    if mode == FilesMode::Hardlink && fs::hard_link(src, dest).is_ok() {
        return Ok(());
    }
    // fs::copy gives the copy its source's mode; the output's is owner and group only.
    fs::copy(src, dest)?;
    publish::set_output_mode(dest)
}

/// `p<first 2 digits>/p<subject_id>`: the MIMIC-CXR folder of a subject.
fn cxr_subject_dir(subject: SubjectId) -> PathBuf {
    let s = subject.to_string();
    PathBuf::from(format!("p{}", &s[..2.min(s.len())])).join(format!("p{s}"))
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
