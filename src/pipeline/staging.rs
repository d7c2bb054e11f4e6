//! A job's staging folder, the one way every job (table, derived table, copied folder, release
//! copy) stages and publishes: made fresh, filled, then published; dropped unpublished it is
//! removed, so a failed or stopped job of any kind leaves nothing behind. The exception is a
//! publish cut short after its journal: recovery finishes it from this folder, so it stays.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::pipeline::error::JobError;
use crate::pipeline::outdir::OutputDirs;
use crate::pipeline::paths;
use crate::pipeline::publish;
use crate::pipeline::state::{self, Manifest};

pub(crate) struct Staging {
    output: PathBuf,
    /// The build's checked output folders, which the publish uses.
    dirs: Arc<OutputDirs>,
    job: String,
    dir: PathBuf,
    published: bool,
}

impl Staging {
    /// The job's staging folder, empty: what an earlier attempt left there is removed. One that
    /// cannot be made fails the job (its files would be "not staged" and the job published
    /// empty, deleting its outputs).
    pub(crate) fn fresh(output: &Path, dirs: &Arc<OutputDirs>, job: &str) -> Result<Self, JobError> {
        let dir = paths::staging_dir(output, job);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|cause| JobError::Write { path: dir.clone(), cause })?;
        Ok(Self { output: output.to_path_buf(), dirs: Arc::clone(dirs), job: job.to_string(), dir, published: false })
    }

    /// Where the job writes its files (`paths::staged_path` names each one in it).
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Publishes what was staged as `manifest` describes it (see [`publish::publish`]).
    pub(crate) fn publish(mut self, manifest: Manifest) -> Result<(), JobError> {
        debug_assert_eq!(manifest.job, self.job);
        let published = publish::publish(&self.output, &self.dirs, manifest);
        self.published = published.is_ok();
        published.map_err(|cause| JobError::Publish { job: self.job.clone(), cause })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.published && !state::has_journal(&self.output, &self.job) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staging_folder_is_fresh_and_goes_with_its_job_unless_its_publish_was_cut_short() {
        let out = tempfile::tempdir().unwrap();
        let leftover = paths::staging_dir(out.path(), "hosp/t").join("old");
        fs::create_dir_all(leftover.parent().unwrap()).unwrap();
        fs::write(&leftover, "x").unwrap();
        let staging = Staging::fresh(out.path(), &Arc::default(), "hosp/t").unwrap();
        assert!(staging.dir().is_dir() && !leftover.exists(), "an earlier attempt's files are gone");
        fs::write(staging.dir().join("f"), "y").unwrap();
        let dir = staging.dir().to_path_buf();
        drop(staging);
        assert!(!dir.exists(), "a job that failed left its staging folder");
        // Cut short after the journal: the folder stays for recovery.
        let staging = Staging::fresh(out.path(), &Arc::default(), "hosp/t").unwrap();
        let journal =
            paths::state_dir(out.path()).join("journal").join(format!("{}.json", paths::job_file_name("hosp/t")));
        fs::create_dir_all(journal.parent().unwrap()).unwrap();
        fs::write(&journal, "{}").unwrap();
        drop(staging);
        assert!(dir.exists(), "the staging folder of an interrupted publish was removed");
    }
}
