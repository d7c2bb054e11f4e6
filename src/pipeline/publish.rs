//! Publishing a finished job: staged files are renamed over their final paths.
//!
//! A rename is atomic per file, so a reader of the output sees a table's old files or its new
//! ones, never a half-written one. The job's file list is written to a journal before the first
//! rename; after a crash, `recover` redoes the remaining renames from it (publishing is
//! idempotent) and throws away staging folders of jobs that never reached the journal.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::pipeline::file_list;
pub(crate) use crate::pipeline::manifest::{CopyRecord, Manifest, ManifestHead};
use crate::pipeline::outdir;
use crate::pipeline::paths::{job_file_name, staged_path, staging_dir, state_dir};

/// The mode of every file the build creates, also where the creating call ignores the umask
/// (temporary files are 0600, copies take their source's mode).
pub(crate) const FILE_MODE: u32 = 0o640;

/// Gives a file the output's mode.
pub(crate) fn set_output_mode(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(FILE_MODE))
}

fn manifest_path(output: &Path, job: &str) -> PathBuf {
    state_dir(output).join("jobs").join(format!("{}.json", job_file_name(job)))
}

/// How many jobs' manifests were written since `since`: the jobs a build published.
pub(crate) fn published_since(output: &Path, since: std::time::SystemTime) -> usize {
    let Ok(entries) = fs::read_dir(state_dir(output).join("jobs")) else { return 0 };
    entries.flatten().filter(|e| e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t >= since)).count()
}

fn journal_path(output: &Path, job: &str) -> PathBuf {
    state_dir(output).join("journal").join(format!("{}.json", job_file_name(job)))
}

/// A JSON record parsed from its file as it is read, not from a copy in memory (the manifest
/// of a split table lists a file per patient). A record that is not valid JSON of its type is
/// an `InvalidData` or `UnexpectedEof` error; the file system's own errors keep their kind.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> io::Result<T> {
    let file = io::BufReader::with_capacity(1 << 16, fs::File::open(path)?);
    Ok(serde_json::from_reader(file)?)
}

/// A manifest read from its file with what it names checked ([`Manifest::checked`]).
fn read_manifest(path: &Path) -> io::Result<Manifest> {
    read_json::<Manifest>(path)?.checked()
}

/// A job's last manifest; a damaged one is said aloud and taken as none (the job is redone and
/// its record replaced; the files it named are left as they are).
pub(crate) fn load_manifest(output: &Path, job: &str) -> Option<Manifest> {
    let path = manifest_path(output, job);
    match read_manifest(&path) {
        Ok(manifest) => Some(manifest),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "job record unreadable or damaged: the job is redone");
            None
        }
    }
}

/// A job's manifest without its file list and per-patient counts (see [`ManifestHead`]).
pub(crate) fn load_manifest_head(output: &Path, job: &str) -> Option<ManifestHead> {
    read_json(&manifest_path(output, job)).ok()
}

/// Every job's manifest, one at a time (a manifest of a split table lists a file per
/// patient: they are never all in memory at once), in the order of their file names.
pub(crate) fn manifests(output: &Path) -> impl Iterator<Item = Manifest> {
    let mut paths: Vec<PathBuf> = match fs::read_dir(state_dir(output).join("jobs")) {
        Ok(entries) => {
            entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "json")).collect()
        }
        Err(_) => Vec::new(),
    };
    paths.sort();
    paths.into_iter().filter_map(|p| match read_manifest(&p) {
        Ok(manifest) => Some(manifest),
        Err(e) => {
            tracing::warn!(file = %p.display(), error = %e, "job record unreadable or damaged: passed over");
            None
        }
    })
}

/// The jobs with a published file that is missing or was modified after the job's manifest
/// was written (every published file is renamed into place before its manifest is recorded).
pub(crate) fn damaged_jobs(output: &Path) -> Vec<String> {
    let mut damaged = Vec::new();
    for manifest in manifests(output) {
        let Ok(recorded) = fs::metadata(manifest_path(output, &manifest.job)).and_then(|m| m.modified()) else {
            continue;
        };
        let intact = |rel: io::Result<PathBuf>| match rel {
            Ok(rel) => fs::metadata(output.join(rel)).and_then(|m| m.modified()).is_ok_and(|t| t <= recorded),
            Err(e) => {
                tracing::warn!(job = %manifest.job, error = %e, "job record unreadable or damaged: the job is redone");
                false
            }
        };
        // A list that cannot be read is damage too: the job is redone.
        if !manifest.each_file(output).is_ok_and(|mut files| files.all(intact)) {
            damaged.push(manifest.job);
        }
    }
    damaged
}

/// Whether a publish of `job` was interrupted (its journal is there): its staging folder must
/// stay for the next build's recovery to finish the renames.
pub(crate) fn has_journal(output: &Path, job: &str) -> bool {
    journal_path(output, job).exists()
}

/// Drops a job's record (its files are already gone).
pub(crate) fn forget(output: &Path, job: &str) -> io::Result<()> {
    match fs::remove_file(manifest_path(output, job)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, synced, renamed.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Writes `value` as JSON to `path` atomically, streamed: a manifest of 65,000 patients' files
/// is megabytes of text that need not be held in memory.
pub(crate) fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> io::Result<()> {
    write_atomic_with(path, |w| serde_json::to_writer(w, value).map_err(io::Error::other))
}

fn write_atomic_with(path: &Path, write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    let mut out = io::BufWriter::with_capacity(64 << 10, tmp);
    write(&mut out)?;
    let tmp = out.into_inner().map_err(|e| e.into_error())?;
    set_output_mode(tmp.path())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

fn sync_fs(dir: &Path) {
    // One syncfs makes every staged file durable at once, instead of an fsync per file.
    if let Ok(f) = fs::File::open(dir) {
        crate::sys::syncfs(&f);
    }
}

/// Publishes a job whose files are complete in its staging folder.
pub(crate) fn publish(output: &Path, manifest: Manifest) -> io::Result<()> {
    let manifest = sorted(manifest);
    let staging = staging_dir(output, &manifest.job);
    sync_fs(output);
    let journal = journal_path(output, &manifest.job);
    write_json_atomic(&journal, &manifest)?;
    finish_publish(output, &staging, &manifest)?;
    let _ = fs::remove_file(&journal);
    Ok(())
}

/// The idempotent part: rename what is still staged, delete what the job no longer produces,
/// record the manifest, drop the last list of files if it was kept apart.
fn finish_publish(output: &Path, staging: &Path, manifest: &Manifest) -> io::Result<()> {
    let previous = load_manifest(output, &manifest.job).map(sorted);
    // Only what is staged is renamed: a file not staged is unchanged since the last publish
    // (or was renamed before a crash), and costs no syscall. Staged names are kept as 64-bit
    // hashes (a first build of every CXR patient stages 350,000 images): a collision only
    // tries the rename of a file that is not staged, which finds nothing to rename.
    // A staging folder that is gone holds nothing (renamed before a crash); one that cannot be
    // listed is an error: taken as empty, its files would never be published.
    let listing = |e: io::Error| io::Error::new(e.kind(), format!("listing {}: {e}", staging.display()));
    let staged: HashSet<u64> = match fs::read_dir(staging) {
        Ok(entries) => {
            entries.map(|e| e.map(|e| name_key(&e.file_name()))).collect::<io::Result<_>>().map_err(listing)?
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => HashSet::new(),
        Err(e) => return Err(listing(e)),
    };
    if !staged.is_empty() {
        rename_staged(output, staging, &staged, manifest)?;
    }
    if let Some(previous) = &previous {
        let mut removed = 0u64;
        let stale = file_list::each_missing(previous.each_file(output)?, manifest.each_file(output)?, |stale| {
            outdir::check_dirs(output, stale.parent().unwrap_or(Path::new("")))?;
            let path = output.join(stale);
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    Err(io::Error::new(e.kind(), format!("removing {}: {e}", path.display())))
                }
                _ => {
                    removed += 1;
                    remove_empty_parents(output, &path);
                    Ok(())
                }
            }
        });
        match stale {
            // The last record names a path outside the output: it is replaced below, and
            // nothing it names is deleted.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                tracing::warn!(job = %manifest.job, error = %e, "the job's last record is damaged: files it alone named are left in place");
            }
            other => other?,
        }
        if removed > 0 {
            tracing::warn!(job = %manifest.job, files = removed, "removed output files the job no longer produces");
        }
    }
    sync_fs(output);
    write_json_atomic(&manifest_path(output, &manifest.job), manifest)?;
    if let Some(old) = previous.as_ref().and_then(|p| p.file_list.as_ref()) {
        if manifest.file_list.as_ref() != Some(old) {
            file_list::remove(output, old);
        }
    }
    let _ = fs::remove_dir_all(staging);
    Ok(())
}

/// A manifest with its inline files in [`Path`] order (older builds did not always sort them).
fn sorted(mut manifest: Manifest) -> Manifest {
    if !manifest.files.is_sorted() {
        manifest.files.sort();
        manifest.files.dedup();
    }
    manifest
}

/// Renames the staged files of `manifest` over their final paths.
fn rename_staged(output: &Path, staging: &Path, staged: &HashSet<u64>, manifest: &Manifest) -> io::Result<()> {
    // Each folder is checked (or made) once per build: one `lstat` or `mkdir`, never a link
    // followed (see [`outdir`]). A file in a folder made now cannot exist yet: no failing
    // rename or content check.
    for rel in manifest.each_file(output)? {
        let rel = rel?;
        let from = staged_path(staging, &rel);
        if !from.file_name().is_some_and(|n| staged.contains(&name_key(n))) {
            continue;
        }
        let to = output.join(&rel);
        let parent = rel.parent().unwrap_or(Path::new(""));
        let fresh = outdir::ensure_dirs(output, parent)?;
        if !fresh && same_content(&from, &to) {
            // Unchanged output keeps its mtime: readers and rsync see no change.
            fs::remove_file(&from)?;
            continue;
        }
        match fs::rename(&from, &to) {
            Ok(()) => {}
            // Not staged: unchanged since the last publish, or already renamed before a crash.
            Err(e) if e.kind() == io::ErrorKind::NotFound && !from.exists() => {}
            Err(e) => return Err(io::Error::new(e.kind(), format!("renaming {} into place: {e}", to.display()))),
        }
    }
    Ok(())
}

fn name_key(name: &std::ffi::OsStr) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    crate::fingerprint::Fnv::default().bytes(name.as_bytes()).finish()
}

/// Drops the folders checked by this build (the output may change between builds).
pub(crate) fn forget_made_dirs() {
    outdir::forget_checked();
}

/// `write_atomic`'s temporary files (`.tmpXXXXXX`) left by a crash between write and rename.
fn remove_orphan_temporaries(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_temp = name.to_str().is_some_and(|n| n.starts_with(".tmp"));
        if is_temp && entry.file_type().is_ok_and(|t| t.is_file()) {
            tracing::info!(file = %entry.path().display(), "removing a temporary file left by an interrupted write");
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// True when both files exist with the same bytes.
fn same_content(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    // A symbolic link (files = "symlink") is the same only as a link to the same target: a
    // copy with the same bytes must still be replaced by the link, and the other way round.
    let (Ok(la), Ok(lb)) = (fs::symlink_metadata(a), fs::symlink_metadata(b)) else { return false };
    if la.file_type().is_symlink() || lb.file_type().is_symlink() {
        return la.file_type().is_symlink()
            && lb.file_type().is_symlink()
            && fs::read_link(a).ok().is_some_and(|t| fs::read_link(b).ok() == Some(t));
    }
    let (Ok(ma), Ok(mb)) = (fs::metadata(a), fs::metadata(b)) else { return false };
    if ma.len() != mb.len() || !ma.is_file() || !mb.is_file() {
        return false;
    }
    let (Ok(mut fa), Ok(mut fb)) = (fs::File::open(a), fs::File::open(b)) else { return false };
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = match fa.read(&mut ba) {
            Ok(0) => return true,
            Ok(n) => n,
            Err(_) => return false,
        };
        if fb.read_exact(&mut bb[..n]).is_err() || ba[..n] != bb[..n] {
            return false;
        }
    }
}

/// Removes folders left empty by a deletion, up to (not including) the output root.
fn remove_empty_parents(output: &Path, path: &Path) {
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d == output || !d.starts_with(output) || fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}

/// An exclusive lock on an output folder, held for the life of a build or a daemon. It is an
/// identity, not a file name: [`OutputLock::check`] fails once the lock file or the output
/// folder was removed or replaced, since another mimic-eye could then lock the new one.
pub struct OutputLock {
    file: fs::File,
    path: PathBuf,
    output: PathBuf,
    output_id: (u64, u64),
}

fn identity(meta: &fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// Takes the output's lock, or fails at once (naming the holder's PID) if another mimic-eye
/// holds it. The output root is made safe first (see [`outdir::secure_root`]).
pub fn lock_output(output: &Path) -> io::Result<OutputLock> {
    use std::os::unix::fs::OpenOptionsExt;
    let named = |what: &str, path: &Path| {
        let path = path.to_path_buf();
        let what = what.to_string();
        move |e: io::Error| io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
    };
    outdir::secure_root(output)?;
    fs::create_dir_all(state_dir(output)).map_err(named("creating", &state_dir(output)))?;
    let path = state_dir(output).join("lock");
    let mut file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(named("opening", &path))?;
    if !crate::sys::try_lock_exclusive(&file) {
        let mut holder = String::new();
        let _ = io::Read::read_to_string(&mut file, &mut holder);
        let holder = holder.trim().parse::<u32>().map_or(String::new(), |pid| format!(" (PID {pid})"));
        return Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!("{} is locked: another mimic-eye{holder} is using this output", path.display()),
        ));
    }
    // The holder's PID, for the message above (the lock itself is the flock, not this text).
    file.set_len(0).map_err(named("writing", &path))?;
    io::Write::write_all(&mut file, format!("{}\n", std::process::id()).as_bytes()).map_err(named("writing", &path))?;
    let output_id = identity(&fs::metadata(output).map_err(named("reading", output))?);
    Ok(OutputLock { file, path, output: output.to_path_buf(), output_id })
}

impl OutputLock {
    /// Fails when the output folder or the lock file is no longer the one locked: removed,
    /// renamed or replaced. A daemon that sees this must stop (another build may run there).
    pub fn check(&self) -> io::Result<()> {
        let gone =
            |what: &str| io::Error::other(format!("{what}: the output is no longer the one this process locked"));
        let now = fs::metadata(&self.output)
            .map_err(|_| gone(&format!("the output folder {} was removed", self.output.display())))?;
        if identity(&now) != self.output_id {
            return Err(gone(&format!("the output folder {} was replaced", self.output.display())));
        }
        let held = identity(&self.file.metadata()?);
        match fs::symlink_metadata(&self.path) {
            Ok(m) if identity(&m) == held => Ok(()),
            Ok(_) => Err(gone(&format!("the lock file {} was replaced", self.path.display()))),
            Err(_) => Err(gone(&format!("the lock file {} was removed", self.path.display()))),
        }
    }
}

/// Finishes publishes interrupted by a crash and discards unpublished staging folders and the
/// temporary files of atomic writes that a crash cut short.
pub(crate) fn recover(output: &Path) -> io::Result<usize> {
    for dir in
        [output.to_path_buf(), state_dir(output), state_dir(output).join("jobs"), state_dir(output).join("journal")]
    {
        remove_orphan_temporaries(&dir);
    }
    let mut redone = 0;
    if let Ok(entries) = fs::read_dir(state_dir(output).join("journal")) {
        for entry in entries.flatten() {
            let manifest = match read_manifest(&entry.path()) {
                Ok(manifest) => manifest,
                // Not a record, or one naming paths outside the output: dropped (its job's
                // staging folder goes below, and the job is redone). A file that cannot be read
                // now is kept for next time.
                Err(e) if matches!(e.kind(), io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof) => {
                    tracing::warn!(file = %entry.path().display(), error = %e, "interrupted publish's journal is damaged: dropped");
                    let _ = fs::remove_file(entry.path());
                    continue;
                }
                Err(_) => continue,
            };
            finish_publish(output, &staging_dir(output, &manifest.job), &manifest)?;
            fs::remove_file(entry.path())?;
            redone += 1;
        }
    }
    let _ = fs::remove_dir_all(state_dir(output).join("staging"));
    file_list::remove_unnamed(output, |job_file| {
        read_json::<Manifest>(&state_dir(output).join("jobs").join(format!("{job_file}.json")))
            .ok()?
            .file_list
            .map(|l| l.name)
    });
    Ok(redone)
}
