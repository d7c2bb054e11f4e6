//! The planner: decides what each table job must do from its last manifest, so a build (and the
//! daemon after every change) redoes only what an input or cohort change affects.

use std::collections::BTreeSet;

use crate::cohort::Cohort;

use crate::ids::SubjectId;
pub(super) use crate::pipeline::manifest::InputKey;
use crate::pipeline::manifest::ManifestHead;

/// What a table job does this build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Action {
    /// Inputs, settings and cohort unchanged: nothing to do.
    Skip,
    /// Read the table and write every output.
    Full,
    /// The cohort changed: read the table once, write only the new patients' files, and drop
    /// the files of patients who left. Other patients' files are not touched.
    Patients { added: BTreeSet<SubjectId>, removed: BTreeSet<SubjectId> },
}

/// Decides one job. `input` is the job's input fingerprint (with its settings and, for
/// dicom-routed tables, the dicom map); `split` is whether it writes per-patient files by subject.
pub(super) fn decide(previous: Option<&ManifestHead>, input: &InputKey, cohort: &Cohort, split: bool) -> Action {
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
pub(super) fn cohort_list(cohort: &Cohort) -> Vec<u64> {
    let mut v: Vec<u64> = cohort.subjects().map(SubjectId::get).collect();
    v.sort_unstable();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::Fingerprint;

    fn cohort(ids: &[u64]) -> Cohort {
        Cohort::from_subjects(ids.iter().map(|i| SubjectId::parse(i.to_string().as_bytes()).unwrap()))
    }

    #[test]
    fn decisions() {
        let key =
            |size| InputKey { file: Some(Fingerprint { size, mtime_ns: 1, sample_fnv: 2 }), ..Default::default() };
        let (x, y) = (key(1), key(2));
        let prev = ManifestHead { input: x.clone(), cohort: vec![1, 2], ..Default::default() };
        assert_eq!(decide(None, &x, &cohort(&[1]), true), Action::Full);
        assert_eq!(decide(Some(&prev), &y, &cohort(&[1, 2]), true), Action::Full);
        assert_eq!(decide(Some(&prev), &x, &cohort(&[1, 2]), true), Action::Skip);
        assert_eq!(decide(Some(&prev), &x, &cohort(&[9]), false), Action::Skip);
        let unreadable = InputKey { file: None, ..x.clone() };
        let prev_unreadable = ManifestHead { input: unreadable.clone(), ..Default::default() };
        assert_eq!(decide(Some(&prev_unreadable), &unreadable, &cohort(&[1, 2]), true), Action::Full);
        let Action::Patients { added, removed } = decide(Some(&prev), &x, &cohort(&[2, 3]), true) else { panic!() };
        assert_eq!(added.iter().map(|s| s.get()).collect::<Vec<_>>(), vec![3]);
        assert_eq!(removed.iter().map(|s| s.get()).collect::<Vec<_>>(), vec![1]);
    }
}
