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
}

/// How the linker links: the profile's time rule, the stay window, who is in the cohort, and
/// each table's SHA-256 check.
#[derive(Clone, Copy)]
pub(crate) struct LinkSettings<'a> {
    pub profile: Profile,
    pub window_days: u32,
    pub rule: &'a CohortRule,
    pub sha256: &'a dyn Fn(&Path) -> Sha256Check,
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
}

pub(super) fn skip(warnings: &mut Vec<LinkReject>, table: &str, line: u64, reason: String) {
    tracing::warn!(table, line, reason, "linker skipped a row");
    warnings.push(LinkReject { table: table.to_string(), line, reason });
}
