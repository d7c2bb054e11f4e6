//! The linker actor: reads the small tables that decide who is in MIMIC-Eye and which emergency
//! stay each chest X-ray belongs to (SPEC §3), and hands the routing table to the table jobs.
//!
//! The CXR metadata (377k rows in MIMIC-CXR-JPG) and edstays (425k) are streamed: the linker
//! keeps a few ids per image of the cohort, never the rows themselves (cxr_meta re-reads the
//! metadata to write them), so its memory for `--cohort cxr` is tens of bytes per image.

mod cxr;
mod links;
mod times;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::cohort::CohortRule;
use crate::ids::{DicomId, SubjectId};
use crate::pipeline::error::ReadError;
use crate::pipeline::small_table::SmallTable;

use links::skip;
pub(crate) use links::{CxrRow, LinkReject, LinkSettings, Links};
pub(crate) use times::study_datetime_column;

/// The linker's tables, each optional: a missing dataset is left out, and said.
#[derive(Debug, Clone, Copy)]
pub(super) struct LinkTables<'a> {
    pub cxr_metadata: Option<&'a Path>,
    pub edstays: Option<&'a Path>,
    pub reflacx_phases: &'a [PathBuf],
    pub master_sheet: Option<&'a Path>,
}

/// The small linker tables other jobs write (REFLACX metadata, the master sheet), and how many
/// rows each linker table gave (the shrink guard's counts).
#[derive(Debug, Default, Clone)]
pub(super) struct LinkInputs {
    pub reflacx_metadata: Vec<SmallTable>,
    pub master_sheet: Option<SmallTable>,
    /// For the CXR metadata and edstays, the rows of the cohort (what the links are made of),
    /// malformed records included.
    pub rows: Vec<(PathBuf, u64)>,
    /// A subjects-file cohort's size and a hash of its ids (the shrink guard tells an edited
    /// file from a shrunk table by them); zero for the other cohorts.
    pub subjects: (usize, u64),
}

/// Phase 1: the cohort and the stay links, from whichever linker tables exist.
/// `settings.rule`: who is in the cohort (the eye-tracking patients of SPEC §3, every CXR
/// patient, or a list); the metadata rows kept under it are the CXR subset.
pub(super) fn link(tables: LinkTables<'_>, settings: LinkSettings<'_>) -> Result<(Links, LinkInputs), ReadError> {
    let sha256 = settings.sha256;
    let read = |p: &Path| SmallTable::read_checked(p, sha256(p), settings.cancel, |_, _| true);
    let mut inputs = LinkInputs {
        master_sheet: tables.master_sheet.map(read).transpose()?,
        reflacx_metadata: tables.reflacx_phases.iter().map(|p| read(p)).collect::<Result<_, _>>()?,
        rows: Vec::new(),
        subjects: settings.rule.fingerprint(),
    };
    let mut links = Links::default();
    let mut warnings = Vec::new();
    collect_eye_gaze(inputs.master_sheet.as_ref(), &mut links, &mut warnings)?;
    collect_reflacx(&inputs.reflacx_metadata, &mut links, &mut warnings)?;
    // The metadata's warnings follow edstays' in the summary, as they always did.
    let mut cxr_warnings = Vec::new();
    let subset = match tables.cxr_metadata {
        Some(path) => {
            let subset = cxr::read_subset(path, settings, &mut links, &mut cxr_warnings)?;
            inputs.rows.push((path.to_path_buf(), subset.rows_read));
            Some(subset)
        }
        None => None,
    };
    let stays = match tables.edstays {
        Some(path) => {
            let (stays, rows) = cxr::read_stays(
                path,
                sha256(path),
                settings.cancel,
                &stay_subjects(&links, settings.rule),
                &mut warnings,
            )?;
            inputs.rows.push((path.to_path_buf(), rows));
            stays
        }
        None => HashMap::new(),
    };
    if let Some(subset) = subset {
        cxr::link_stays(subset, &stays, settings.window_days, &mut links);
    }
    // Kept for the whole build: without the growth's slack (a third of it at 377,000 images).
    links.cxr_rows.shrink_to_fit();
    links.set_studies();
    warnings.append(&mut cxr_warnings);
    let others = inputs.reflacx_metadata.iter().chain(&inputs.master_sheet);
    inputs.rows.extend(others.map(|t| (t.path.clone(), t.rows.len() as u64 + t.rejected())));
    match settings.rule {
        CohortRule::EyeTracking | CohortRule::Cxr => {
            for &subject in links.eye_gaze_subjects.iter().chain(&links.reflacx_subjects) {
                links.cohort.insert(subject);
            }
        }
        // Exactly the listed subjects: their eye-tracking images route to them, others' to
        // nobody.
        CohortRule::Subjects(listed) => {
            listed.iter().for_each(|&s| links.cohort.insert(s));
            links.cohort.dicom_subject.retain(|_, s| listed.contains(s));
        }
    }
    links.warnings = warnings;
    Ok((links, inputs))
}

/// Whose stays are read: the eye-tracking subjects, the CXR subset's and the listed ones.
fn stay_subjects(links: &Links, rule: &CohortRule) -> HashSet<SubjectId> {
    let mut subjects: HashSet<SubjectId> =
        links.eye_gaze_subjects.iter().chain(&links.reflacx_subjects).copied().collect();
    subjects.extend(links.cxr_rows.iter().map(|r| r.subject));
    if let CohortRule::Subjects(listed) = rule {
        subjects.extend(listed.iter().copied());
    }
    subjects
}

/// EG: dicom_ids (and patients) of the EyeGaze master sheet.
fn collect_eye_gaze(
    sheet: Option<&SmallTable>,
    links: &mut Links,
    warnings: &mut Vec<LinkReject>,
) -> Result<(), ReadError> {
    let Some(sheet) = sheet else { return Ok(()) };
    let dicom_col = sheet.require("dicom_id")?;
    let patient_col = sheet.require("patient_id")?;
    for row in &sheet.rows {
        match (DicomId::parse(row.fields.field(dicom_col)), SubjectId::parse(row.fields.field(patient_col))) {
            (Ok(dicom), Ok(subject)) => {
                links.eye_gaze_subjects.insert(subject);
                links.cohort.dicom_subject.insert(dicom.clone(), subject);
                links.eye_gaze_dicoms.insert(dicom);
            }
            (Err(e), _) | (_, Err(e)) => skip(warnings, "egd-cxr/master_sheet", row.line, e.to_string()),
        }
    }
    Ok(())
}

/// RF: dicom_ids (and subjects) of the three REFLACX phases.
fn collect_reflacx(phases: &[SmallTable], links: &mut Links, warnings: &mut Vec<LinkReject>) -> Result<(), ReadError> {
    for phase in phases {
        let dicom_col = phase.require("dicom_id")?;
        let subject_col = phase.require("subject_id")?;
        for row in &phase.rows {
            match (DicomId::parse(row.fields.field(dicom_col)), SubjectId::parse(row.fields.field(subject_col))) {
                (Ok(dicom), Ok(subject)) => {
                    links.reflacx_subjects.insert(subject);
                    links.cohort.dicom_subject.entry(dicom.clone()).or_insert(subject);
                    links.reflacx_dicoms.insert(dicom);
                }
                (Err(e), _) | (_, Err(e)) => skip(warnings, "reflacx/metadata", row.line, e.to_string()),
            }
        }
    }
    Ok(())
}
