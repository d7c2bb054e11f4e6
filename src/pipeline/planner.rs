//! The planner: decides what each table job must do from its last manifest, so a build (and the
//! daemon after every change) redoes only what an input or cohort change affects.

use std::collections::BTreeSet;

use crate::cohort::Cohort;
use crate::config::Config;
use crate::fingerprint::Fnv;
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

/// The settings every output depends on.
pub fn settings_key(config: &Config) -> String {
    format!(
        "profile={};index={};window={};files={:?};v={}",
        config.profile.as_str(),
        config.index_column,
        config.window_days,
        config.files,
        env!("CARGO_PKG_VERSION")
    )
}

/// A hash of what routes rows by dicom id (EyeGaze tables are redone when it changes).
pub fn dicom_map_key(cohort: &Cohort) -> String {
    let mut pairs: Vec<(&str, u64)> = cohort.dicoms().map(|(d, s)| (d.as_str(), s.get())).collect();
    pairs.sort_unstable();
    let mut h = Fnv::default();
    for (d, s) in pairs {
        h = h.str(d).u64(s);
    }
    format!("{:016x}", h.finish())
}

/// Decides one job. `input` is the job's input fingerprint (with its settings and, for
/// dicom-routed tables, the dicom map); `split` is whether it writes per-patient files by subject.
pub fn decide(previous: Option<&Manifest>, input: &str, cohort: &Cohort, split: bool) -> Action {
    let Some(prev) = previous else { return Action::Full };
    if prev.input != input {
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
        let prev = Manifest { input: "x".into(), cohort: vec![1, 2], ..Default::default() };
        assert_eq!(decide(None, "x", &cohort(&[1]), true), Action::Full);
        assert_eq!(decide(Some(&prev), "y", &cohort(&[1, 2]), true), Action::Full);
        assert_eq!(decide(Some(&prev), "x", &cohort(&[1, 2]), true), Action::Skip);
        assert_eq!(decide(Some(&prev), "x", &cohort(&[9]), false), Action::Skip);
        let Action::Patients { added, removed } = decide(Some(&prev), "x", &cohort(&[2, 3]), true) else { panic!() };
        assert_eq!(added.iter().map(|s| s.get()).collect::<Vec<_>>(), vec![3]);
        assert_eq!(removed.iter().map(|s| s.get()).collect::<Vec<_>>(), vec![1]);
    }
}
