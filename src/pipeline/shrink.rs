//! The guard on the linker's tables: a CXR metadata, edstays, REFLACX phase or master sheet that
//! loses most of its rows (a header-only file left by a failed download) would silently remove
//! the cohort's images and links. Such a build fails and the previous output stays, unless the
//! shrink is accepted explicitly (`build --accept-shrink`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::pipeline::linker::LinkInputs;
use crate::pipeline::paths;
use crate::pipeline::publish;

/// Rows of each linker table that the last accepted build used, by file.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub(super) struct LinkerRows(BTreeMap<PathBuf, u64>);

#[derive(Debug, thiserror::Error)]
#[error(
    "{}: {now} rows where the previous build had {before}; a linker table that loses most of its rows would remove the cohort's images and stay links, so the previous output is kept (if the shrink is deliberate, run `mimic-eye build --accept-shrink` once)",
    path.display()
)]
pub(super) struct Shrunk {
    pub path: PathBuf,
    pub before: u64,
    pub now: u64,
}

impl LinkerRows {
    /// The rows each linker table contributed (for the CXR metadata and edstays: the rows of
    /// the cohort, which is what the links are made of).
    pub(super) fn of(inputs: &LinkInputs) -> Self {
        Self(inputs.rows.iter().cloned().collect())
    }

    fn path(output: &Path) -> PathBuf {
        paths::state_dir(output).join("linker-rows.json")
    }

    fn load(output: &Path) -> Option<Self> {
        serde_json::from_slice(&std::fs::read(Self::path(output)).ok()?).ok()
    }

    /// Fails when a table now has fewer than half the rows it had in the last accepted build.
    pub(super) fn check(&self, output: &Path) -> Result<(), Shrunk> {
        let Some(before) = Self::load(output) else { return Ok(()) };
        for (path, &was) in &before.0 {
            let now = self.0.get(path).copied().unwrap_or(0);
            if now * 2 < was {
                return Err(Shrunk { path: path.clone(), before: was, now });
            }
        }
        Ok(())
    }

    /// Takes `path`'s count from the last accepted build (a table left out of this one
    /// because it is still being written).
    pub(super) fn carry(&mut self, output: &Path, path: &Path) {
        if let Some(was) = Self::load(output).and_then(|b| b.0.get(path).copied()) {
            self.0.insert(path.to_path_buf(), was);
        }
    }

    /// Records these counts as the ones the next build is compared with.
    pub(super) fn record(&self, output: &Path) -> std::io::Result<()> {
        if Self::load(output).as_ref() == Some(self) {
            return Ok(());
        }
        publish::write_atomic(&Self::path(output), &serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)
    }
}
