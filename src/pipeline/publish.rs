//! Publishing a finished job: staged files are renamed over their final paths.
//!
//! A rename is atomic per file, so a reader of the output sees a table's old files or its new
//! ones, never a half-written one. The job's file list is written to a journal before the first
//! rename; after a crash, `recover` redoes the remaining renames from it (publishing is
//! idempotent) and throws away staging folders of jobs that never reached the journal.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::Path;

use crate::pipeline::file_list;
use crate::pipeline::outdir::OutputDirs;
use crate::pipeline::paths::{staged_path, staging_dir, state_dir};
use crate::pipeline::state::Manifest;
use crate::pipeline::state::{journal_path, load_manifest, manifest_path, read_json, read_manifest, write_json_atomic};

/// One syncfs makes every staged file durable at once, instead of an fsync per file. A failure
/// (EIO: a write-back that did not reach the disk) fails the publish: the journal is not
/// written, so nothing that may not be on disk is published.
fn sync_fs(dir: &Path) -> io::Result<()> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("syncing the file system of {}: {e}", dir.display()));
    let f = fs::File::open(dir).map_err(named)?;
    crate::sys::syncfs(&f).map_err(named)
}

/// Before the first rename or deletion of a build: the output's listing stops being current
/// (see [`crate::pipeline::paths::listing_current`]), durably, so that a crash after the change
/// never leaves a listing taken for current.
fn output_changes(output: &Path, dirs: &OutputDirs) -> io::Result<()> {
    if !dirs.first_change() {
        return Ok(());
    }
    match fs::remove_file(crate::pipeline::paths::listing_current(output)) {
        Ok(()) => sync_fs(output),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Publishes a job whose files are complete in its staging folder.
pub(crate) fn publish(output: &Path, dirs: &OutputDirs, manifest: Manifest) -> io::Result<()> {
    let manifest = sorted(manifest);
    let staging = staging_dir(output, &manifest.job);
    sync_fs(output)?;
    let journal = journal_path(output, &manifest.job);
    write_json_atomic(&journal, &manifest)?;
    finish_publish(output, dirs, &staging, &manifest)?;
    let _ = fs::remove_file(&journal);
    Ok(())
}

/// The idempotent part: rename what is still staged, delete what the job no longer produces,
/// record the manifest, drop the last list of files if it was kept apart.
fn finish_publish(output: &Path, dirs: &OutputDirs, staging: &Path, manifest: &Manifest) -> io::Result<()> {
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
        rename_staged(output, dirs, staging, &staged, manifest)?;
    }
    if let Some(previous) = &previous {
        let mut removed = 0u64;
        let stale = file_list::each_missing(previous.each_file(output)?, manifest.each_file(output)?, |stale| {
            dirs.check(output, stale.parent().unwrap_or(Path::new("")))?;
            output_changes(output, dirs)?;
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
    sync_fs(output)?;
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
fn rename_staged(
    output: &Path,
    dirs: &OutputDirs,
    staging: &Path,
    staged: &HashSet<u64>,
    manifest: &Manifest,
) -> io::Result<()> {
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
        let fresh = dirs.ensure(output, parent)?;
        if !fresh && same_content(&from, &to) {
            // Unchanged output keeps its mtime: readers and rsync see no change.
            fs::remove_file(&from)?;
            continue;
        }
        output_changes(output, dirs)?;
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
            finish_publish(output, &OutputDirs::default(), &staging_dir(output, &manifest.job), &manifest)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::paths::staged_path;
    use std::path::PathBuf;

    /// A job `hosp/t` with `files` staged (each holding `content`).
    fn stage(output: &Path, files: &[&str], content: &str) -> Manifest {
        let staging = staging_dir(output, "hosp/t");
        fs::create_dir_all(&staging).unwrap();
        for f in files {
            fs::write(staged_path(&staging, Path::new(f)), content).unwrap();
        }
        Manifest { job: "hosp/t".into(), files: files.iter().map(PathBuf::from).collect(), ..Default::default() }
    }

    #[test]
    fn a_publish_puts_staged_files_in_place_and_removes_what_the_job_no_longer_makes() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        publish(out, &OutputDirs::default(), stage(out, &["patient_1/Hosp/t.csv", "patient_2/Hosp/t.csv"], "old"))
            .unwrap();
        assert_eq!(fs::read_to_string(out.join("patient_2/Hosp/t.csv")).unwrap(), "old");
        publish(out, &OutputDirs::default(), stage(out, &["patient_1/Hosp/t.csv"], "new")).unwrap();
        assert_eq!(fs::read_to_string(out.join("patient_1/Hosp/t.csv")).unwrap(), "new");
        assert!(
            !out.join("patient_2").exists(),
            "the file the job no longer makes, and its emptied folder, are removed"
        );
        assert!(!staging_dir(out, "hosp/t").exists() && !journal_path(out, "hosp/t").exists());
        assert_eq!(load_manifest(out, "hosp/t").unwrap().files, vec![PathBuf::from("patient_1/Hosp/t.csv")]);
    }

    #[test]
    fn recovery_finishes_a_publish_cut_short_after_its_journal_and_drops_one_cut_before() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        publish(out, &OutputDirs::default(), stage(out, &["patient_1/Hosp/t.csv", "patient_2/Hosp/t.csv"], "old"))
            .unwrap();
        // A crash after the journal and one rename: recovery renames the rest.
        let manifest = sorted(stage(out, &["patient_1/Hosp/t.csv", "patient_2/Hosp/t.csv"], "new"));
        write_json_atomic(&journal_path(out, "hosp/t"), &manifest).unwrap();
        let staging = staging_dir(out, "hosp/t");
        fs::rename(staged_path(&staging, Path::new("patient_1/Hosp/t.csv")), out.join("patient_1/Hosp/t.csv")).unwrap();
        assert_eq!(recover(out).unwrap(), 1);
        for p in ["patient_1/Hosp/t.csv", "patient_2/Hosp/t.csv"] {
            assert_eq!(fs::read_to_string(out.join(p)).unwrap(), "new", "{p}");
        }
        assert!(!journal_path(out, "hosp/t").exists());
        // A crash before the journal: the staged files are thrown away, the output stays.
        stage(out, &["patient_1/Hosp/t.csv"], "newer");
        assert_eq!(recover(out).unwrap(), 0);
        assert_eq!(fs::read_to_string(out.join("patient_1/Hosp/t.csv")).unwrap(), "new");
        assert!(!staging.exists());
    }
}
