//! One copied-folder job: files placed (linked, cloned, copied or written) into its staging
//! folder as the cohort's folders are walked, then published like any table. See the module doc
//! of [`super`] for the rules.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::copied_before::CopiedBefore;
use crate::config::FilesMode;
use crate::counts::TableCounts;
use crate::pipeline::context::BuildContext;
use crate::pipeline::error::{At, JobError};
use crate::pipeline::file_list::ListWriter;
use crate::pipeline::paths;
use crate::pipeline::staging::Staging;
use crate::pipeline::state::{self, CopyRecord};

use super::place::{
    copy_recorded, is_mismatch, is_output_failure, is_unsupported, link_target, reflink, same_file, Placed,
};

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
pub(super) struct FolderJob<'a> {
    pub(super) ctx: &'a BuildContext,
    key: &'static str,
    staging: Staging,
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
    started: std::time::Instant,
}

impl<'a> FolderJob<'a> {
    pub(super) fn new(ctx: &'a BuildContext, key: &'static str) -> Result<Self, JobError> {
        let staging = Staging::fresh(&ctx.config.output, &ctx.dirs, key)?;
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
            started: std::time::Instant::now(),
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
    pub(super) fn folder(&mut self, src: &Path, dest: &Path) -> Result<(), JobError> {
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
        for entry in sorted_entries(src)? {
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
                self.file_of(&path, Some(&meta), &dest.join(&name), None)?;
            }
        }
        Ok(())
    }

    /// Metadata of `path`, following a symbolic link only when it stays inside the input tree.
    pub(super) fn resolve(&mut self, path: &Path) -> Option<fs::Metadata> {
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
    pub(super) fn file(&mut self, src: &Path, dest: &Path, content: Option<Vec<u8>>) -> Result<(), JobError> {
        let source = fs::metadata(src).ok();
        self.file_of(src, source.as_ref(), dest, content)
    }

    /// [`Self::file`] with the source's metadata already taken (the walk's): a rebuild beside a
    /// mirror looks at 100,000 files, each once on each side, not once per question asked.
    pub(super) fn file_of(
        &mut self,
        src: &Path,
        source: Option<&fs::Metadata>,
        dest: &Path,
        content: Option<Vec<u8>>,
    ) -> Result<(), JobError> {
        self.counts.read += 1;
        let mode = self.ctx.config.files;
        let final_path = self.ctx.config.output.join(dest);
        let staged = paths::staged_path(self.staging.dir(), dest);
        // What is in place, not followed: a link, or the file itself.
        let in_place = fs::symlink_metadata(&final_path).ok();
        let final_is_link = in_place.as_ref().is_some_and(|m| m.file_type().is_symlink());
        // What is in place and left as it is, if anything.
        let mut kept: Option<Kept> = None;
        let unchanged = match (&content, mode, source, &in_place) {
            (Some(bytes), ..) => !final_is_link && fs::read(&final_path).is_ok_and(|old| &old == bytes),
            (None, FilesMode::Symlink, ..) => {
                final_is_link && fs::read_link(&final_path).is_ok_and(|t| t == link_target(src)) && final_path.exists()
            }
            (None, _, Some(source), Some(out)) if !final_is_link && same_file(source, out, mode) => {
                kept = self.kept_copy(src, source, out, dest);
                kept.is_some()
            }
            _ => false,
        };
        let placed = if unchanged {
            let kept = kept.get_or_insert(Kept::Unrecorded);
            Ok(classify(source, in_place.as_ref(), content.is_some(), kept.record()))
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
                        let placed = classify(source, in_place.as_ref(), false, Some(&record));
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
        let copy = self.count(source.map_or(0, fs::Metadata::len), placed, kept);
        if let Err(cause) = self.list.push(dest, copy.as_ref()) {
            return Err(JobError::Write { path: self.list.path().to_path_buf(), cause });
        }
        self.counts.written += 1;
        Ok(())
    }

    /// Counts how a file was placed, for the summary; `kept` is `Some` for a file left as it
    /// was. Returns the copy record to list with the file: a kept file's own (never the bare
    /// source identity `classify` makes up when a copy in place has none), a new copy's.
    fn count(&self, bytes: u64, placed: Placed, kept: Option<Kept>) -> Option<CopyRecord> {
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
    fn kept_copy(&mut self, src: &Path, source: &fs::Metadata, out: &fs::Metadata, dest: &Path) -> Option<Kept> {
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
                record.same_source(&CopyRecord::identity(source))
                    && record.source.size == out.len()
                    && (record.reflink == want_reflink || !want_reflink)
                    && listed.is_none_or(|digest| crate::sums::parse_hex(&record.sha256) == Some(digest))
            })
            .map(Kept::Copy)
    }

    pub(super) fn reject(&mut self, what: &str, error: &dyn std::fmt::Display) {
        tracing::warn!(job = self.key, what, %error, "id is not path-safe: not copied");
        self.counts.read += 1;
        self.counts.rejected += 1;
    }

    pub(super) fn publish(self) -> Result<(String, TableCounts), JobError> {
        let list_path = self.list.path().to_path_buf();
        let list = self.list.finish().at(&list_path)?;
        let manifest = state::Manifest {
            job: self.key.to_string(),
            counts: self.counts,
            file_list: Some(list),
            ..Default::default()
        };
        self.staging.publish(manifest)?;
        let seconds = self.started.elapsed().as_secs_f64();
        tracing::debug!(job = self.key, files = self.counts.written, seconds, "copied folder published");
        Ok((self.key.to_string(), self.counts))
    }
}

/// How a file already in place (and kept) was placed, for the summary's counts, from the
/// metadata of its source and of what is in place (not followed); `record` is the record of its
/// copy, if it is one.
fn classify(
    source: Option<&fs::Metadata>,
    in_place: Option<&fs::Metadata>,
    content: bool,
    record: Option<&CopyRecord>,
) -> Placed {
    if content {
        return Placed::Written;
    }
    let (Some(s), Some(o)) = (source, in_place) else { return Placed::Written };
    if o.file_type().is_symlink() {
        return Placed::Symlinked;
    }
    if o.ino() == s.ino() && o.dev() == s.dev() {
        return Placed::Linked;
    }
    match record {
        Some(r) if r.reflink => Placed::Reflinked(r.clone()),
        Some(r) => Placed::Copied(r.clone()),
        None => Placed::Copied(CopyRecord::identity(s)),
    }
}

/// A folder's entries in name order (none when it does not exist). A folder that cannot be
/// listed fails the job: taken as empty, its files would be deleted from the output.
pub(super) fn sorted_entries(dir: &Path) -> Result<Vec<fs::DirEntry>, JobError> {
    let fail = |cause: io::Error| JobError::Input { path: dir.to_path_buf(), cause };
    let mut entries: Vec<fs::DirEntry> = match fs::read_dir(dir) {
        Ok(entries) => entries.collect::<io::Result<_>>().map_err(fail)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(fail(e)),
    };
    entries.sort_by_key(|e| e.file_name());
    Ok(entries)
}
