//! What a build's reads and copies found against the datasets' `SHA256SUMS.txt`
//! ([`Integrity`]), and the provenance the summary records: each dataset's root, version and
//! checksum state, the program and the settings.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::config::Config;
use crate::digest::{Expected, Recorder};
use crate::layout::DatasetKey;
use crate::sums::Sums;

/// What one dataset's reads came to, for the summary.
#[derive(Debug, Default, Clone)]
struct DatasetRecord {
    tables: BTreeSet<PathBuf>,
    /// Tables read whose checksum line could not be read or parsed.
    unverifiable: BTreeSet<PathBuf>,
    checked: u64,
    mismatched: BTreeSet<PathBuf>,
}

/// A build's checksum file lookups and what its reads and copies found.
#[derive(Debug, Default)]
pub(crate) struct Integrity {
    pub sums: Sums,
    record: Mutex<BTreeMap<DatasetKey, DatasetRecord>>,
    /// How copied folders' files were placed (links, copies, …).
    pub files: Mutex<crate::counts::FileStats>,
}

/// A dataset in the summary's `datasets`: where it was read from and whether its download
/// matched its `SHA256SUMS.txt`.
#[derive(Debug, Clone, Serialize)]
pub struct Provenance {
    pub root: PathBuf,
    pub version: Option<String>,
    /// `verified`: every listed file this build read matched; `mismatch`: one did not;
    /// `unverifiable`: the file could not be read (see `sha256sums_error`) or a table read has
    /// a malformed line (see `unverifiable`); `absent`: no SHA256SUMS.txt.
    pub sha256sums: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256sums_error: Option<String>,
    /// Malformed lines in SHA256SUMS.txt (passed over; the others are checked).
    #[serde(skip_serializing_if = "is_zero")]
    pub sha256sums_malformed_lines: u64,
    /// Tables read unverified: their line could not be read or parsed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unverifiable: Vec<PathBuf>,
    /// Tables read from the dataset by this build.
    pub tables: usize,
    /// Files (tables and copies) hashed and compared with their listed digest by this build.
    pub checked: u64,
    /// Files whose bytes differ from their listed digest.
    pub mismatched: Vec<PathBuf>,
    /// A version folder newer than the one in use sits beside it (never switched to).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub newer_version: Option<String>,
}

impl Integrity {
    /// A build's record, checking against checksum lines already parsed.
    pub(crate) fn with_sums(sums: Sums) -> Arc<Self> {
        Arc::new(Self { sums, ..Default::default() })
    }

    /// A table about to be read: counted for its dataset; the check to make at the end of the
    /// read, when its dataset lists it.
    pub(crate) fn table(self: &Arc<Self>, path: &Path) -> Option<Expected> {
        let key = self.sums.dataset_of(path)?;
        let mut record = self.record.lock().unwrap_or_else(|e| e.into_inner());
        let r = record.entry(key).or_default();
        r.tables.insert(path.into());
        let sums = self.sums.datasets.get(&key)?;
        let listed = sums.listed.contains_key(path);
        if sums.error.is_some() || (!listed && sums.unverifiable.contains(path)) {
            tracing::warn!(table = %path.display(), "its SHA256SUMS.txt line cannot be read or parsed: read unverified");
            r.unverifiable.insert(path.into());
        }
        drop(record);
        self.file(path)
    }

    /// [`Self::table`] as the reader's option.
    pub(crate) fn table_check(self: &Arc<Self>, path: &Path) -> crate::source::Sha256Check {
        self.table(path).map_or(crate::source::Sha256Check::Off, crate::source::Sha256Check::Expect)
    }

    /// [`Self::file`] as the reader's option (a file read as a table but not counted as one).
    pub(crate) fn table_check_file(self: &Arc<Self>, path: &Path) -> crate::source::Sha256Check {
        self.file(path).map_or(crate::source::Sha256Check::Off, crate::source::Sha256Check::Expect)
    }

    /// The check for a file that is copied (not counted as a table).
    pub(crate) fn file(self: &Arc<Self>, path: &Path) -> Option<Expected> {
        let digest = self.sums.expected(path)?;
        Some(Expected::recorded(path, digest, Arc::clone(self) as Arc<dyn Recorder>))
    }
}

impl Recorder for Integrity {
    fn outcome(&self, path: &Path, matched: bool) {
        let Some(key) = self.sums.dataset_of(path) else { return };
        let mut record = self.record.lock().unwrap_or_else(|e| e.into_inner());
        let r = record.entry(key).or_default();
        r.checked += 1;
        if matched {
            r.mismatched.remove(path);
        } else {
            r.mismatched.insert(path.to_path_buf());
        }
    }
}

impl Integrity {
    /// Copied files that differed from their listed digest (tables fail on their own).
    pub(crate) fn mismatched_files(&self) -> Vec<PathBuf> {
        let record = self.record.lock().unwrap_or_else(|e| e.into_inner());
        record.values().flat_map(|r| r.mismatched.iter().filter(|p| !r.tables.contains(*p)).cloned()).collect()
    }

    /// The summary's `datasets`, keyed like `[datasets]`.
    pub(crate) fn provenance(&self, config: &Config) -> BTreeMap<&'static str, Provenance> {
        let record = self.record.lock().unwrap_or_else(|e| e.into_inner());
        DatasetKey::ALL
            .into_iter()
            .map(|key| {
                let r = record.get(&key).cloned().unwrap_or_default();
                let sums = self.sums.datasets.get(&key);
                let present = sums.is_some_and(|s| s.present);
                let readable = sums.is_some_and(|s| s.error.is_none());
                let status = match (present, readable && r.unverifiable.is_empty(), r.mismatched.is_empty()) {
                    (false, _, _) => "absent",
                    (true, _, false) => "mismatch",
                    (true, false, true) => "unverifiable",
                    (true, true, true) => "verified",
                };
                let version = config.datasets.versions.get(key).clone();
                let p = Provenance {
                    root: std::path::absolute(config.datasets.get(key))
                        .unwrap_or_else(|_| config.datasets.get(key).to_path_buf()),
                    newer_version: newer_version(config.datasets.get(key), version.as_deref()),
                    version,
                    sha256sums: status,
                    sha256sums_error: sums.and_then(|s| s.error.clone()),
                    sha256sums_malformed_lines: sums.map_or(0, |s| s.malformed),
                    unverifiable: r.unverifiable.into_iter().collect(),
                    tables: r.tables.len(),
                    checked: r.checked,
                    mismatched: r.mismatched.into_iter().collect(),
                };
                (key.config_key(), p)
            })
            .collect()
    }

    /// Warns about (and exports as a gauge) each dataset with a newer version folder beside the
    /// one in use. Never switches: the user pins versions.
    pub(crate) fn report_newer_versions(config: &Config) {
        for key in DatasetKey::ALL {
            let in_use = config.datasets.versions.get(key).as_deref();
            let newer = newer_version(config.datasets.get(key), in_use);
            if let (Some(newer), Some(in_use)) = (&newer, in_use) {
                tracing::warn!(
                    dataset = key.config_key(),
                    in_use,
                    newer = %newer,
                    "a newer version of {} sits beside the one in use; it is not used until [versions] {} = \"{newer}\"",
                    key.title(),
                    key.config_key()
                );
            }
            metrics::gauge!(crate::telemetry::NEWER_VERSION, "dataset" => key.config_key()).set(if newer.is_some() {
                1.0
            } else {
                0.0
            });
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The program that wrote an output, for the summary.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Program {
    pub name: &'static str,
    pub version: &'static str,
}

impl Program {
    pub(crate) fn this() -> Self {
        Self { name: env!("CARGO_PKG_NAME"), version: env!("CARGO_PKG_VERSION") }
    }
}

/// The settings an output was built with, for the summary.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub profile: &'static str,
    pub window_days: u32,
    pub index_column: bool,
    pub files: crate::config::FilesMode,
}

impl Settings {
    pub fn of(config: &Config) -> Self {
        Self {
            profile: config.profile.as_str(),
            window_days: config.window_days,
            index_column: config.index_column,
            files: config.files,
        }
    }
}

/// The newest version folder beside `folder` (a version folder named `in_use`) that is newer.
fn newer_version(folder: &Path, in_use: Option<&str>) -> Option<String> {
    let in_use = in_use?;
    let parent = folder.parent()?;
    let order = |v: &str| v.split('.').map(|p| p.parse::<u64>().unwrap_or(0)).collect::<Vec<_>>();
    let versions = crate::layout::version_folders(parent).ok()?;
    versions.into_iter().filter(|v| order(v) > order(in_use)).max_by_key(|v| order(v))
}
