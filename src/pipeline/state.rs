//! The build's records and the files it writes whole: job manifests and publish journals in
//! `<output>/.mimic-eye/`, atomic writes (temporary file, sync, rename), and the output's lock.
//! [`crate::pipeline::publish`] uses them to publish a job; the daemon and the planner read them.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub(crate) use crate::pipeline::manifest::{CopyRecord, Manifest, ManifestHead};
use crate::pipeline::outdir;
use crate::pipeline::paths::{job_file_name, state_dir};

/// The mode of every file the build creates, also where the creating call ignores the umask
/// (temporary files are 0600, copies take their source's mode).
pub(crate) const FILE_MODE: u32 = 0o640;

/// Gives a file the output's mode.
pub(crate) fn set_output_mode(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(FILE_MODE))
}

pub(crate) fn manifest_path(output: &Path, job: &str) -> PathBuf {
    state_dir(output).join("jobs").join(format!("{}.json", job_file_name(job)))
}

/// How many jobs' manifests were written since `since`: the jobs a build published.
pub(crate) fn published_since(output: &Path, since: std::time::SystemTime) -> usize {
    let Ok(entries) = fs::read_dir(state_dir(output).join("jobs")) else { return 0 };
    entries.flatten().filter(|e| e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t >= since)).count()
}

pub(crate) fn journal_path(output: &Path, job: &str) -> PathBuf {
    state_dir(output).join("journal").join(format!("{}.json", job_file_name(job)))
}

/// A JSON record parsed from its file as it is read, not from a copy in memory (the manifest
/// of a split table lists a file per patient). A record that is not valid JSON of its type is
/// an `InvalidData` or `UnexpectedEof` error; the file system's own errors keep their kind.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> io::Result<T> {
    let file = io::BufReader::with_capacity(1 << 16, fs::File::open(path)?);
    Ok(serde_json::from_reader(file)?)
}

/// A manifest read from its file with what it names checked ([`Manifest::checked`]).
pub(crate) fn read_manifest(path: &Path) -> io::Result<Manifest> {
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

pub(crate) fn write_atomic_with(path: &Path, write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
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
