//! Where things live in the output folder: the state folder, each job's staging folder and
//! the flat staged name of each file, the rejects files. A leaf module, so the writer, publish
//! and the daemon agree on the layout without depending on each other.

use std::path::{Path, PathBuf};

/// The program's own state inside the output (manifests, journal, staging, rejects).
pub(crate) const STATE_DIR: &str = ".mimic-eye";

/// `<output>/.mimic-eye`.
pub(crate) fn state_dir(output: &Path) -> PathBuf {
    output.join(STATE_DIR)
}

/// The file name of a job key (`hosp/labevents` → `hosp__labevents`).
pub(crate) fn job_file_name(job: &str) -> String {
    job.replace('/', "__")
}

pub(crate) fn staging_dir(output: &Path, job: &str) -> PathBuf {
    state_dir(output).join("staging").join(job_file_name(job))
}

/// Staged names longer than this are replaced by a hash: a long file name a few folders deep
/// would pass NAME_MAX (255 bytes) once flattened.
const MAX_STAGED_NAME: usize = 200;

/// Where a file of a job is staged: flat in the job's staging folder, named after its final
/// relative path's bytes (`%` → `%25`, `/` → `%2F`), so staging needs no directory tree of its
/// own; a name that would be too long becomes `%h` and a 128-bit hash of the path (no escaped
/// name starts with `%h`, so the two kinds never meet).
pub(crate) fn staged_path(staging: &Path, rel: &Path) -> PathBuf {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let bytes = rel.as_os_str().as_bytes();
    let mut name = Vec::with_capacity(bytes.len() + 8);
    for &b in bytes {
        match b {
            b'%' => name.extend_from_slice(b"%25"),
            b'/' => name.extend_from_slice(b"%2F"),
            _ => name.push(b),
        }
    }
    if name.len() > MAX_STAGED_NAME {
        use crate::fingerprint::Fnv;
        let (a, b) = (Fnv::default().bytes(bytes).finish(), Fnv::default().u64(1).bytes(bytes).finish());
        name = format!("%h{a:016x}{b:016x}").into_bytes();
    }
    staging.join(std::ffi::OsString::from_vec(name))
}

/// Present while the output's `SHA256SUMS.txt` lists the output as it is: written by the
/// listing that walked it, removed before a publish first renames or deletes a file. While
/// it is there, a build that changed nothing patches the summary's and report's lines only.
pub(crate) fn listing_current(output: &Path) -> PathBuf {
    state_dir(output).join("listing-current")
}

/// `<output>/.mimic-eye/rejects/<table>.csv`, relative to the output root.
pub(crate) fn rejects_path(table: &str) -> PathBuf {
    PathBuf::from(STATE_DIR).join("rejects").join(format!("{table}.csv"))
}
