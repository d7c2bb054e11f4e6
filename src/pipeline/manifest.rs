//! What a published job records: its files, counts and the key of its inputs (the planner
//! compares it), the cohort it was written for, and where each copied file came from. A leaf
//! module: publish writes manifests, the planner and the folder jobs read them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cohort::Cohort;
use crate::config::{Config, FilesMode, Profile};
use crate::counts::TableCounts;
use crate::fingerprint::{Fingerprint, Fnv};
pub(crate) use crate::pipeline::copy_record::CopyRecord;
use crate::pipeline::file_list::{ListReader, ListRef};
use crate::pipeline::outdir;

/// What a published job produced: the record later jobs compare against.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub job: String,
    /// The table was split per patient (its rows went to patient folders).
    #[serde(default)]
    pub split: bool,
    pub files: Vec<PathBuf>,
    pub counts: TableCounts,
    /// The input fingerprint and settings the job ran with (the planner compares it).
    #[serde(default, deserialize_with = "lenient")]
    pub input: InputKey,
    /// The cohort the per-patient files were written for.
    #[serde(default)]
    pub cohort: Vec<u64>,
    /// Rows written per patient, so patients who leave can be dropped without rereading.
    #[serde(default)]
    pub per_patient: std::collections::BTreeMap<u64, u64>,
    /// Copied files (not hard links): the source each was copied from and the copy's hash, as
    /// builds before the file lists recorded them (a list now carries them beside its paths).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub copies: std::collections::BTreeMap<PathBuf, CopyRecord>,
    /// The files listed apart, on disk (then `files` is empty): copied folders. Written as
    /// `list` since the lists carry copy records, so that an older binary, which would read
    /// the records as paths, finds no list (it then sees a job without files) rather than a
    /// list it misreads; `file_list` is the key of the lists without records before.
    #[serde(default, rename = "list", alias = "file_list", skip_serializing_if = "Option::is_none")]
    pub file_list: Option<ListRef>,
}

/// A manifest's files one at a time, from the manifest or from its list on disk, in [`Path`]
/// order.
pub(crate) enum Files<'a> {
    Inline(std::slice::Iter<'a, PathBuf>),
    Apart(ListReader),
}

impl Iterator for Files<'_> {
    type Item = std::io::Result<PathBuf>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Files::Inline(files) => files.next().cloned().map(|rel| outdir::checked_rel(rel, "a manifest")),
            Files::Apart(list) => list.next(),
        }
    }
}

/// A manifest without its per-file parts (files, per-patient row counts, copies): what the
/// planner needs to skip an unchanged table, read without a path per patient in memory (the
/// parser skips the rest without allocating it).
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ManifestHead {
    #[serde(default)]
    pub split: bool,
    pub counts: TableCounts,
    #[serde(default, deserialize_with = "lenient")]
    pub input: InputKey,
    #[serde(default)]
    pub cohort: Vec<u64>,
    /// Whether it has per-patient row counts (older manifests tell a split table by them).
    #[serde(default, rename = "per_patient", deserialize_with = "non_empty_map")]
    pub has_per_patient: bool,
}

impl ManifestHead {
    /// Whether this job split its table per patient.
    pub(crate) fn was_split(&self) -> bool {
        self.split || self.has_per_patient
    }
}

/// Whether a JSON object has any entry, read without keeping them.
fn non_empty_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    struct AnyEntry;
    impl<'de> serde::de::Visitor<'de> for AnyEntry {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
            use serde::de::IgnoredAny;
            let mut any = false;
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {
                any = true;
            }
            Ok(any)
        }
    }
    d.deserialize_map(AnyEntry)
}

impl Manifest {
    /// Checks what a manifest read from a file names: its job key and list name (its paths
    /// are checked as they are read, by [`Manifest::each_file`]).
    pub(crate) fn checked(self) -> std::io::Result<Self> {
        outdir::check_job_key(&self.job)?;
        if let Some(list) = &self.file_list {
            outdir::check_state_name(&list.name)?;
        }
        Ok(self)
    }

    /// Its files, wherever they are listed (a list that cannot be opened is an error).
    pub(crate) fn each_file(&self, output: &Path) -> std::io::Result<Files<'_>> {
        match &self.file_list {
            Some(list) => ListReader::of(output, list).map(Files::Apart),
            None => Ok(Files::Inline(self.files.iter())),
        }
    }

    /// How many files it lists.
    pub(crate) fn file_count(&self) -> u64 {
        self.file_list.as_ref().map_or(self.files.len() as u64, |l| l.count)
    }
}

/// What a table job's outputs depend on, recorded in its manifest: a job whose key and cohort
/// are unchanged is skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InputKey {
    pub settings: SettingsKey,
    /// The input file; `None` (unreadable) never matches.
    pub file: Option<Fingerprint>,
    /// For dicom-routed tables (EyeGaze): a hash of the dicom → patient map.
    pub dicom_map: Option<u64>,
    /// For derived tables: the SHA-256 of everything the link read (see
    /// `pipeline::link_cache::LinkKey`), which with the settings decides their rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub links: Option<String>,
}

/// The settings every output depends on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SettingsKey {
    pub profile: Profile,
    pub index_column: bool,
    pub window_days: u32,
    pub files: FilesMode,
    pub program_version: String,
}

impl InputKey {
    /// The key of a table job reading `path` under `config`, with the dicom map if routed by it.
    pub(crate) fn new(config: &Config, path: &Path, dicoms: Option<&Cohort>) -> Self {
        let file = crate::fingerprint::of_file(path);
        Self { settings: SettingsKey::of(config), file, dicom_map: dicoms.map(dicom_map_hash), links: None }
    }

    /// The key of a derived table: the settings and what the link read.
    pub(crate) fn derived(config: &Config, links: &str) -> Self {
        Self { settings: SettingsKey::of(config), links: Some(links.to_string()), ..Default::default() }
    }
}

impl SettingsKey {
    fn of(config: &Config) -> Self {
        Self {
            profile: config.profile,
            index_column: config.index_column,
            window_days: config.window_days,
            files: config.files,
            program_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

/// A hash of what routes rows by dicom id (EyeGaze tables are redone when it changes).
fn dicom_map_hash(cohort: &Cohort) -> u64 {
    let mut pairs: Vec<(&str, u64)> = cohort.dicoms().map(|(d, s)| (d.as_str(), s.get())).collect();
    pairs.sort_unstable();
    let mut h = Fnv::default();
    for (d, s) in pairs {
        h = h.str(d).u64(s);
    }
    h.finish()
}

/// Reads a manifest's key leniently: a key in an older format is no key (the job is redone
/// once) rather than an unreadable manifest (which would lose the record of its files).
pub(super) fn lenient<'de, D: serde::Deserializer<'de>>(d: D) -> Result<InputKey, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(value).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_read_as_its_head_keeps_what_the_planner_needs() {
        let mut full = Manifest { job: "hosp/labevents".into(), cohort: vec![1, 2], ..Default::default() };
        full.files = vec![PathBuf::from("patient_1/Hosp/labevents.csv")];
        full.per_patient.insert(1, 7);
        full.counts.read = 7;
        let head: ManifestHead = serde_json::from_str(&serde_json::to_string(&full).unwrap()).unwrap();
        assert_eq!((head.cohort.clone(), head.counts.read), (vec![1, 2], 7));
        // Written before `split` was recorded: told by its per-patient counts.
        assert!(!head.split && head.was_split());
        full.per_patient.clear();
        let head: ManifestHead = serde_json::from_str(&serde_json::to_string(&full).unwrap()).unwrap();
        assert!(!head.was_split());
        full.split = true;
        let head: ManifestHead = serde_json::from_str(&serde_json::to_string(&full).unwrap()).unwrap();
        assert!(head.was_split());
    }
}
