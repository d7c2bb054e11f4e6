//! The output folder is ours alone. Three rules, checked where paths enter and where folders
//! are made or emptied:
//! - a relative path read from a state file (manifest, file list, journal) is data: it must lie
//!   under the output (no `..`, nothing absolute, no NUL); one that does not is a damaged
//!   state file;
//! - a folder inside the output that is a symbolic link is never written, read or deleted
//!   through: the build fails naming it;
//! - an output root that others can write to (where they could plant such a link) is made
//!   0750, said aloud.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use crate::pipeline::paths::state_dir;

/// An error for a path read from a state file that does not lie under the output.
fn outside(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{what} names {path:?}, which is not a relative path inside the output: damaged state file"),
    )
}

/// `path` if it is a relative path of plain names (no `..`, `.`, root or NUL), as every path
/// the build records is; an `InvalidData` error naming it otherwise.
pub(crate) fn checked_rel(path: PathBuf, what: &str) -> io::Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let plain = !path.as_os_str().is_empty()
        && !path.as_os_str().as_bytes().contains(&0)
        && path.components().all(|c| matches!(c, Component::Normal(_)));
    if plain {
        Ok(path)
    } else {
        Err(outside(&path, what))
    }
}

/// A job key as the build makes them (`hosp/labevents`, `cxr_meta`, `files/cxr-jpg`): names of
/// ASCII letters, digits, `_`, `-` and `.` (not first) between `/`. Anything else read from a
/// state file (a key of `..` would name the state folder itself) is refused.
pub(crate) fn check_job_key(job: &str) -> io::Result<()> {
    let name_ok = |n: &str| {
        !n.is_empty()
            && !n.starts_with('.')
            && n.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    };
    if job.split('/').all(name_ok) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("job key {job:?} is not one the build makes: damaged state file"),
        ))
    }
}

/// A file name in the state folder, read from a state file (a file list's name): one plain name.
pub(crate) fn check_state_name(name: &str) -> io::Result<()> {
    let plain = !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0']);
    if plain {
        Ok(())
    } else {
        Err(outside(Path::new(name), "a manifest's file list"))
    }
}

/// The error for a link where the output has a folder.
fn link_error(path: &Path) -> io::Error {
    io::Error::other(format!(
        "{} is a symbolic link inside the output: mimic-eye never writes, reads or deletes through one (remove it; the next build makes the folder)",
        path.display()
    ))
}

/// Output folders checked (or made) by one build, as 64-bit hashes of their paths: 330,000
/// folders of a 65,000-patient build would hold 25 MB as paths. A collision only skips a check
/// of a folder whose twin was checked; the rename into it still needs it to be a folder. Each
/// build has its own (the output may change between builds).
#[derive(Default)]
pub(crate) struct OutputDirs {
    checked: Mutex<HashSet<u64>>,
    /// A file of the output was renamed or deleted by this build (or is about to be).
    changed: std::sync::atomic::AtomicBool,
}

fn dir_key(dir: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    crate::fingerprint::Fnv::default().bytes(dir.as_os_str().as_bytes()).finish()
}

impl OutputDirs {
    /// True the first time it is called in a build: the caller is about to change the output.
    pub(crate) fn first_change(&self) -> bool {
        !self.changed.swap(true, std::sync::atomic::Ordering::SeqCst)
    }

    /// Makes `rel`'s missing folders under `output` top-down and checks the others are
    /// folders, not links (one `lstat` or `mkdir` per folder per build). True when `rel` itself
    /// was made now.
    pub(crate) fn ensure(&self, output: &Path, rel: &Path) -> io::Result<bool> {
        self.walk(output, rel, true)
    }

    /// Checks that each folder of `rel` under `output` that exists is a folder, not a link,
    /// before a file in it is deleted or read.
    pub(crate) fn check(&self, output: &Path, rel: &Path) -> io::Result<()> {
        self.walk(output, rel, false).map(|_| ())
    }

    fn walk(&self, output: &Path, rel: &Path, make: bool) -> io::Result<bool> {
        let mut known = self.checked.lock().unwrap_or_else(|e| e.into_inner());
        let mut made_now = false;
        let mut dir = output.to_path_buf();
        for part in rel.iter() {
            dir.push(part);
            let key = dir_key(&dir);
            if known.contains(&key) {
                made_now = false;
                continue;
            }
            made_now = match fs::symlink_metadata(&dir) {
                Ok(m) if m.file_type().is_symlink() => return Err(link_error(&dir)),
                Ok(m) if m.is_dir() => false,
                Ok(_) => {
                    return Err(io::Error::other(format!("{} is in the output where a folder belongs", dir.display())))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && make => match fs::create_dir(&dir) {
                    Ok(()) => true,
                    Err(e) => return Err(io::Error::new(e.kind(), format!("making folder {}: {e}", dir.display()))),
                },
                // Nothing there: nothing to delete or read through it.
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
            };
            known.insert(key);
        }
        Ok(made_now)
    }
}

/// The state folders a build writes into: none may be a link.
const STATE_FOLDERS: [&str; 5] = ["", "jobs", "journal", "staging", "rejects"];

/// Makes the output root if it is missing, takes away the write bits of group and others if it
/// has them (anyone who can write there could plant a link for a build to follow), and checks
/// that the state folders are not links. Run before the lock is taken.
pub(crate) fn secure_root(output: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let named = |e: io::Error, what: &str| io::Error::new(e.kind(), format!("{what} {}: {e}", output.display()));
    fs::create_dir_all(output).map_err(|e| named(e, "creating output directory"))?;
    let meta = fs::metadata(output).map_err(|e| named(e, "reading output directory"))?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!("output {} is not a directory", output.display())));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        fs::set_permissions(output, fs::Permissions::from_mode(0o750)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "output directory {} can be written by others (mode {mode:o}) and its mode cannot be changed: {e}; make it 0750",
                    output.display()
                ),
            )
        })?;
        tracing::warn!(output = %output.display(), was = format!("{mode:o}"), "the output directory could be written by others: made 0750");
    }
    for sub in STATE_FOLDERS {
        let dir = if sub.is_empty() { state_dir(output) } else { state_dir(output).join(sub) };
        if fs::symlink_metadata(&dir).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(link_error(&dir));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_pass() {
        for good in ["patient_1/Hosp/labevents.csv", "spreadsheets/x.csv", ".mimic-eye/rejects/hosp/a.csv"] {
            assert!(checked_rel(PathBuf::from(good), "test").is_ok(), "{good}");
        }
        for bad in ["", "/tmp/victim", "../victim", "a/../../b", "./a", "a\0b"] {
            let err = checked_rel(PathBuf::from(bad), "a manifest").unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{bad:?}");
            assert!(err.to_string().contains("damaged state file"), "{err}");
        }
    }

    #[test]
    fn job_keys_and_list_names_are_plain() {
        for good in ["hosp/labevents", "cxr_meta", "files/cxr-jpg", "egd-cxr/master_sheet", "hosp/a.b"] {
            assert!(check_job_key(good).is_ok(), "{good}");
        }
        for bad in ["", "..", "a/..", "/abs", "a//b", "a/", ".x", "a\0"] {
            assert!(check_job_key(bad).is_err(), "{bad:?}");
        }
        assert!(check_state_name("files__cxr-jpg.1a2b.files").is_ok());
        for bad in ["", ".", "..", "../../etc/passwd", "a/b"] {
            assert!(check_state_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_linked_folder_is_never_made_through_and_named() {
        let t = tempfile::tempdir().unwrap();
        let (out, away) = (t.path().join("out"), t.path().join("away"));
        fs::create_dir_all(&out).unwrap();
        fs::create_dir_all(&away).unwrap();
        std::os::unix::fs::symlink(&away, out.join("patient_1")).unwrap();
        let dirs = OutputDirs::default();
        let err = dirs.ensure(&out, Path::new("patient_1/Hosp")).unwrap_err();
        assert!(err.to_string().contains("patient_1 is a symbolic link"), "{err}");
        assert!(!away.join("Hosp").exists());
        assert!(dirs.check(&out, Path::new("patient_1")).is_err());
        // A real folder is made top-down, once.
        assert!(dirs.ensure(&out, Path::new("patient_2/Hosp")).unwrap());
        assert!(!dirs.ensure(&out, Path::new("patient_2/Hosp")).unwrap());
        assert!(out.join("patient_2/Hosp").is_dir());
        assert!(dirs.check(&out, Path::new("patient_3/Hosp")).is_ok());
        // Another build knows nothing of this one's folders.
        assert!(OutputDirs::default().ensure(&out, Path::new("patient_2/Hosp")).is_ok_and(|made| !made));
    }
}
