//! The guard on the linker's tables: a CXR metadata, edstays, REFLACX phase or master sheet that
//! loses most of its rows (a header-only file left by a failed download) would silently remove
//! the cohort's images and links. Such a build fails and the previous output stays, unless the
//! shrink is accepted explicitly (`build --accept-shrink`).
//!
//! Counts are kept by dataset and table (`mimic_cxr_jpg/mimic-cxr-2.0.0-metadata`), not by the
//! path as typed: the same download named `in`, `./in/` or by an absolute path, or moved to
//! another disk, is the same table. A missing or damaged record fails safe: the cohort's size
//! is compared with the last summary's, and fresh counts are recorded, said aloud. A changed
//! cohort rule (another subjects file) is a deliberate edit: named as such, and counted afresh.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::layout::DatasetKey;
use crate::pipeline::linker::LinkInputs;
use crate::pipeline::paths;
use crate::pipeline::state;

/// Rows of each linker table that the last accepted build used, by `dataset/table`, and the
/// cohort rule they were counted under.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub(super) struct LinkerRows {
    /// What decided the cohort: its kind and, for a subjects file, how many subjects and a
    /// hash of them.
    cohort: String,
    rows: BTreeMap<String, u64>,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum Shrunk {
    #[error(
        "{table} ({}): {now} rows where the previous build had {before}; a linker table that loses most of its rows would remove the cohort's images and stay links, so the previous output is kept (if the shrink is deliberate, run `mimic-eye build --accept-shrink` once)",
        path.display()
    )]
    Table { table: String, path: PathBuf, before: u64, now: u64 },
    #[error(
        "the cohort has {now} patients where the last build had {before}, and the record of the linker tables' rows ({}) is missing or damaged; the previous output is kept (if the shrink is deliberate, run `mimic-eye build --accept-shrink` once)",
        record.display()
    )]
    Cohort { record: PathBuf, before: u64, now: u64 },
}

/// What was recorded before, as far as it can be read.
enum Recorded {
    /// No build recorded counts yet (a first build).
    Nothing,
    Counts(LinkerRows),
    /// The record is gone or unreadable although an earlier build exists.
    Lost,
}

/// The key of a linker table: its dataset's config key and its table name.
fn table_key(config: &Config, path: &Path) -> String {
    let dataset = DatasetKey::ALL
        .into_iter()
        .filter(|k| path.starts_with(config.datasets.get(*k)))
        .max_by_key(|k| config.datasets.get(*k).components().count());
    let table = crate::input::table_name(path).unwrap_or_else(|| path.display().to_string());
    match dataset {
        Some(k) => format!("{}/{table}", k.config_key()),
        None => table,
    }
}

/// The cohort rule as recorded: a subjects file by its size and content, so a shorter file is
/// seen as the edit it is.
fn cohort_rule(config: &Config, inputs: &LinkInputs) -> String {
    match &config.cohort {
        crate::cohort::CohortKind::Subjects(_) => format!("subjects:{}:{:016x}", inputs.subjects.0, inputs.subjects.1),
        other => other.name().to_string(),
    }
}

impl LinkerRows {
    /// The rows each linker table contributed (for the CXR metadata and edstays: the rows of
    /// the cohort, which is what the links are made of).
    pub(super) fn of(config: &Config, inputs: &LinkInputs) -> Self {
        let rows = inputs.rows.iter().map(|(path, n)| (table_key(config, path), *n)).collect();
        Self { cohort: cohort_rule(config, inputs), rows }
    }

    fn path(output: &Path) -> PathBuf {
        paths::state_dir(output).join("linker-rows.json")
    }

    fn load(output: &Path) -> Recorded {
        let earlier_build = output.join("summary.json").exists();
        match std::fs::read(Self::path(output)) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(rows) => Recorded::Counts(rows),
                Err(_) => Recorded::Lost,
            },
            Err(_) if earlier_build => Recorded::Lost,
            Err(_) => Recorded::Nothing,
        }
    }

    /// Fails when a table now has fewer than half the rows it had in the last accepted build
    /// (or, with the record lost, the cohort fewer than half its patients).
    pub(super) fn check(&self, config: &Config, inputs: &LinkInputs, cohort_now: usize) -> Result<(), Shrunk> {
        let output = &config.output;
        match Self::load(output) {
            Recorded::Nothing => Ok(()),
            Recorded::Lost => {
                tracing::warn!(record = %Self::path(output).display(), "the linker tables' row counts are missing or damaged: the cohort is compared with the last summary, and fresh counts recorded");
                let before = previous_patients(output).unwrap_or(0);
                if (cohort_now as u64).saturating_mul(2) < before {
                    return Err(Shrunk::Cohort { record: Self::path(output), before, now: cohort_now as u64 });
                }
                Ok(())
            }
            Recorded::Counts(before) if before.cohort != self.cohort => {
                tracing::warn!(
                    before = %before.cohort,
                    now = %self.cohort,
                    "the cohort rule changed (another cohort, or an edited subjects file): a deliberate edit, so the linker tables' rows are counted afresh"
                );
                Ok(())
            }
            Recorded::Counts(before) => {
                for (table, &was) in &before.rows {
                    let now = self.rows.get(table).copied().unwrap_or(0);
                    if now.saturating_mul(2) < was {
                        let path = inputs
                            .rows
                            .iter()
                            .find(|(p, _)| table_key(config, p) == *table)
                            .map_or_else(|| PathBuf::from(table), |(p, _)| p.clone());
                        return Err(Shrunk::Table { table: table.clone(), path, before: was, now });
                    }
                }
                Ok(())
            }
        }
    }

    /// Takes `path`'s count from the last accepted build (a table left out of this one
    /// because it is still being written).
    pub(super) fn carry(&mut self, config: &Config, path: &Path) {
        if let Recorded::Counts(before) = Self::load(&config.output) {
            let key = table_key(config, path);
            if let Some(&was) = before.rows.get(&key) {
                self.rows.insert(key, was);
            }
        }
    }

    /// Records these counts as the ones the next build is compared with.
    pub(super) fn record(&self, output: &Path) -> std::io::Result<()> {
        if matches!(Self::load(output), Recorded::Counts(ref before) if before == self) {
            return Ok(());
        }
        state::write_atomic(&Self::path(output), &serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)
    }
}

/// The cohort size the last summary recorded.
fn previous_patients(output: &Path) -> Option<u64> {
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(output.join("summary.json")).ok()?).ok()?;
    summary["patients"].as_u64()
}
