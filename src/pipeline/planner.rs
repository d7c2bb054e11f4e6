//! The planner: decides what each table job must do from its last manifest, so a build (and the
//! daemon after every change) redoes only what an input or cohort change affects.

use std::collections::BTreeSet;

use crate::cohort::Cohort;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::{Config, FilesMode, Profile};
use crate::fingerprint::{Fingerprint, Fnv};
use crate::ids::SubjectId;
use crate::pipeline::publish::Manifest;

/// What a table job does this build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Inputs, settings and cohort unchanged: nothing to do.
    Skip,
    /// Read the table and write every output.
    Full,
    /// The cohort changed: read the table once, write only the new patients' files, and drop
    /// the files of patients who left. Other patients' files are not touched.
    Patients { added: BTreeSet<SubjectId>, removed: BTreeSet<SubjectId> },
}

/// What a table job's outputs depend on, recorded in its manifest: a job whose key and cohort
/// are unchanged is skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputKey {
    pub settings: SettingsKey,
    /// The input file; `None` (unreadable) never matches.
    pub file: Option<Fingerprint>,
    /// For dicom-routed tables (EyeGaze): a hash of the dicom → patient map.
    pub dicom_map: Option<u64>,
}

/// The settings every output depends on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsKey {
    pub profile: Profile,
    pub index_column: bool,
    pub window_days: u32,
    pub files: FilesMode,
    pub program_version: String,
}

impl InputKey {
    /// The key of a table job reading `path` under `config`, with the dicom map if routed by it.
    pub fn new(config: &Config, path: &Path, dicoms: Option<&Cohort>) -> Self {
        let settings = SettingsKey {
            profile: config.profile,
            index_column: config.index_column,
            window_days: config.window_days,
            files: config.files,
            program_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        Self { settings, file: crate::fingerprint::of_file(path), dicom_map: dicoms.map(dicom_map_hash) }
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
pub fn lenient<'de, D: serde::Deserializer<'de>>(d: D) -> Result<InputKey, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(value).unwrap_or_default())
}

/// Decides one job. `input` is the job's input fingerprint (with its settings and, for
/// dicom-routed tables, the dicom map); `split` is whether it writes per-patient files by subject.
pub fn decide(previous: Option<&Manifest>, input: &InputKey, cohort: &Cohort, split: bool) -> Action {
    let Some(prev) = previous else { return Action::Full };
    if input.file.is_none() || prev.input != *input {
        return Action::Full;
    }
    if !split {
        return Action::Skip;
    }
    let before: BTreeSet<SubjectId> =
        prev.cohort.iter().filter_map(|s| SubjectId::parse(s.to_string().as_bytes()).ok()).collect();
    let now: BTreeSet<SubjectId> = cohort.subjects().collect();
    let added: BTreeSet<SubjectId> = now.difference(&before).copied().collect();
    let removed: BTreeSet<SubjectId> = before.difference(&now).copied().collect();
    if added.is_empty() && removed.is_empty() {
        Action::Skip
    } else {
        Action::Patients { added, removed }
    }
}

/// The cohort as stored in a manifest.
pub fn cohort_list(cohort: &Cohort) -> Vec<u64> {
    let mut v: Vec<u64> = cohort.subjects().map(SubjectId::get).collect();
    v.sort_unstable();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cohort(ids: &[u64]) -> Cohort {
        Cohort::from_subjects(ids.iter().map(|i| SubjectId::parse(i.to_string().as_bytes()).unwrap()))
    }

    #[test]
    fn decisions() {
        let key =
            |size| InputKey { file: Some(Fingerprint { size, mtime_ns: 1, sample_fnv: 2 }), ..Default::default() };
        let (x, y) = (key(1), key(2));
        let prev = Manifest { input: x.clone(), cohort: vec![1, 2], ..Default::default() };
        assert_eq!(decide(None, &x, &cohort(&[1]), true), Action::Full);
        assert_eq!(decide(Some(&prev), &y, &cohort(&[1, 2]), true), Action::Full);
        assert_eq!(decide(Some(&prev), &x, &cohort(&[1, 2]), true), Action::Skip);
        assert_eq!(decide(Some(&prev), &x, &cohort(&[9]), false), Action::Skip);
        let unreadable = InputKey { file: None, ..x.clone() };
        let prev_unreadable = Manifest { input: unreadable.clone(), ..Default::default() };
        assert_eq!(decide(Some(&prev_unreadable), &unreadable, &cohort(&[1, 2]), true), Action::Full);
        let Action::Patients { added, removed } = decide(Some(&prev), &x, &cohort(&[2, 3]), true) else { panic!() };
        assert_eq!(added.iter().map(|s| s.get()).collect::<Vec<_>>(), vec![3]);
        assert_eq!(removed.iter().map(|s| s.get()).collect::<Vec<_>>(), vec![1]);
    }
}
