//! What the linker makes (the cohort, the CXR subset with its stay links) and how it is told
//! to make it: the types its steps share.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::cohort::{Cohort, CohortRule};
use crate::config::Profile;
use crate::ids::{DicomId, StayId, StudyId, SubjectId};
use crate::pipeline::batch::Rejects;
use crate::pipeline::reader::Header;
use crate::source::Sha256Check;

/// An image of the CXR subset (SPEC §3.2): its metadata row's number and ids, and what Phase 1
/// adds. The row itself stays in the file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CxrRow {
    /// The record's data-row number in the metadata file (rows are kept in file order).
    pub row: u64,
    pub subject: SubjectId,
    pub study: Option<StudyId>,
    pub in_eye_gaze: bool,
    pub in_reflacx: bool,
    pub stay: Option<StayId>,
    /// The stay was the nearest within the window, not one the study falls in.
    pub by_window: bool,
    pub view: View,
}

/// An image's `ViewPosition`, as a fixed vocabulary: what a report may show of it (a value
/// outside it is counted as "other", never repeated).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum View {
    Pa,
    Ap,
    Lateral,
    Other,
    #[default]
    Unknown,
}

impl View {
    pub(crate) fn parse(raw: &[u8]) -> Self {
        match raw.trim_ascii() {
            b"PA" => View::Pa,
            b"AP" => View::Ap,
            b"LATERAL" | b"LL" => View::Lateral,
            b"" => View::Unknown,
            _ => View::Other,
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            View::Pa => "PA",
            View::Ap => "AP",
            View::Lateral => "lateral",
            View::Other => "other",
            View::Unknown => "not given",
        }
    }
}

/// How the linker links: the profile's time rule, the stay window, who is in the cohort, and
/// each table's SHA-256 check.
#[derive(Clone, Copy)]
pub(crate) struct LinkSettings<'a> {
    pub profile: Profile,
    pub window_days: u32,
    pub rule: &'a CohortRule,
    pub sha256: &'a dyn Fn(&Path) -> Sha256Check,
    /// The build's cancellation: a stop ends the linker's reads between batches.
    pub cancel: &'a crate::shutdown::CancelToken,
}

/// A row the linker could not use (its id or time is malformed); listed in `summary.json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LinkReject {
    pub table: String,
    pub line: u64,
    pub reason: String,
}

#[derive(Debug, Default)]
pub(crate) struct Links {
    pub cohort: Cohort,
    pub cxr_header: Header,
    pub cxr_rows: Vec<CxrRow>,
    /// The subset's distinct studies, in the order of their output folders (see
    /// [`Links::set_studies`]): what the folder jobs copy, in the order they copy it.
    pub studies: Vec<(SubjectId, StudyId)>,
    /// The stays of the eye-tracking images (the master sheet's `stay_id`).
    pub stays_by_dicom: HashMap<DicomId, StayId>,
    pub eye_gaze_dicoms: BTreeSet<DicomId>,
    pub reflacx_dicoms: BTreeSet<DicomId>,
    pub eye_gaze_subjects: BTreeSet<SubjectId>,
    pub reflacx_subjects: BTreeSet<SubjectId>,
    pub warnings: Vec<LinkReject>,
    /// Records of the CXR metadata that could not be read (wrong field count…).
    pub cxr_rejects: Rejects,
    pub cxr_source: PathBuf,
}

impl Links {
    pub(crate) fn linked_images(&self) -> usize {
        self.cxr_rows.iter().filter(|r| r.stay.is_some()).count()
    }
    pub(crate) fn stays(&self) -> usize {
        self.cxr_rows.iter().filter_map(|r| r.stay).collect::<HashSet<_>>().len()
    }

    /// Sets [`Links::studies`] from the subset's rows, ordered as the paths
    /// `patient_<subject>/CXR-JPG/s<study>` are (their numbers as text: `2` after `10`), so a
    /// job walking them writes its file list in order and reads the last one forward.
    pub(crate) fn set_studies(&mut self) {
        let mut studies: Vec<(SubjectId, StudyId)> =
            self.cxr_rows.iter().filter_map(|r| Some((r.subject, r.study?))).collect();
        studies.sort_unstable_by(|a, b| {
            as_text_order(a.0.get(), b.0.get()).then_with(|| as_text_order(a.1.get(), b.1.get()))
        });
        studies.dedup();
        studies.shrink_to_fit();
        self.studies = studies;
    }
}

/// How two numbers' decimal texts sort (ids have at most 18 digits, so scaling cannot
/// overflow): the shorter text scaled to the longer's length, a prefix first.
fn as_text_order(a: u64, b: u64) -> std::cmp::Ordering {
    let digits = |n: u64| n.checked_ilog10().unwrap_or(0);
    let (da, db) = (digits(a), digits(b));
    let (sa, sb) = (a * 10u64.pow(db.saturating_sub(da)), b * 10u64.pow(da.saturating_sub(db)));
    sa.cmp(&sb).then(da.cmp(&db))
}

pub(super) fn skip(warnings: &mut Vec<LinkReject>, table: &str, line: u64, reason: String) {
    tracing::warn!(table, line, reason, "linker skipped a row");
    warnings.push(LinkReject { table: table.to_string(), line, reason });
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbers_sort_as_their_texts() {
        let mut numbers = vec![10, 2, 1, 100, 19, 9, 0, 123_456_789_012_345_678, 20];
        numbers.sort_by(|a, b| super::as_text_order(*a, *b));
        let mut texts: Vec<String> = numbers.iter().map(u64::to_string).collect();
        let in_order = texts.clone();
        texts.sort();
        assert_eq!(in_order, texts);
    }
}
