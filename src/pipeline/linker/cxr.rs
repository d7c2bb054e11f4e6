//! The two big linker tables, streamed: the CXR metadata's subset (a few ids per image) and the
//! ED stays of its subjects, then each image's stay.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use chrono::NaiveDateTime;

use super::links::{skip, CxrRow, LinkReject, LinkSettings, Links, View};
use super::times::{parse_datetime, pick_stay, study_time, Stay};
use crate::cohort::CohortRule;
use crate::ids::{DicomId, StayId, StudyId, SubjectId};
use crate::pipeline::error::ReadError;
use crate::pipeline::reader::Header;
use crate::pipeline::small_table::SmallTable;
use crate::shutdown::CancelToken;
use crate::source::Sha256Check;

/// The CXR subset as read, before its stays are known.
pub(super) struct Subset {
    /// Each kept row's study time (parallel to `Links::cxr_rows`).
    times: Vec<Option<NaiveDateTime>>,
    /// The eye-tracking images among them, by index: the master sheet takes their stays.
    tracked: Vec<(usize, DicomId)>,
    /// Rows of the cohort and malformed records: the shrink guard's count.
    pub rows_read: u64,
}

#[derive(Clone, Copy)]
struct MetaColumns {
    dicom: usize,
    subject: usize,
    study: usize,
    date: usize,
    time: usize,
    /// Optional: a metadata file without it gives every image an unknown view.
    view: Option<usize>,
}

impl MetaColumns {
    fn of(header: &Header, path: &Path) -> Result<Self, ReadError> {
        let col = |name| header.require(path, name);
        Ok(Self {
            dicom: col("dicom_id")?,
            subject: col("subject_id")?,
            study: col("study_id")?,
            date: col("StudyDate")?,
            time: col("StudyTime")?,
            view: header.find("ViewPosition"),
        })
    }
}

fn field(fields: &[Vec<u8>], i: usize) -> &[u8] {
    fields.get(i).map_or(&[][..], Vec::as_slice)
}

/// Streams the CXR metadata and keeps, in file order, the images `settings.rule` puts in the
/// subset (SPEC §3.2), adding their subjects to the cohort.
pub(super) fn read_subset(
    path: &Path,
    settings: LinkSettings<'_>,
    links: &mut Links,
    warnings: &mut Vec<LinkReject>,
) -> Result<Subset, ReadError> {
    let mut subset = Subset { times: Vec::new(), tracked: Vec::new(), rows_read: 0 };
    let mut cols: Option<MetaColumns> = None;
    let (header, rejects) =
        SmallTable::visit::<ReadError>(path, (settings.sha256)(path), settings.cancel, |header, origin, _raw, f| {
            let c = match cols {
                Some(c) => c,
                None => *cols.insert(MetaColumns::of(header, path)?),
            };
            let Ok(dicom) = DicomId::parse(field(f, c.dicom)) else { return Ok(()) };
            let in_eye_gaze = links.eye_gaze_dicoms.contains(&dicom);
            let in_reflacx = links.reflacx_dicoms.contains(&dicom);
            let subject = SubjectId::parse(field(f, c.subject));
            let kept = match settings.rule {
                CohortRule::EyeTracking => in_eye_gaze || in_reflacx,
                CohortRule::Cxr => true,
                CohortRule::Subjects(listed) => subject.as_ref().is_ok_and(|s| listed.contains(s)),
            };
            if !kept {
                return Ok(());
            }
            subset.rows_read += 1;
            let subject = match subject {
                Ok(s) => s,
                Err(e) => {
                    skip(warnings, "mimic-cxr-jpg/metadata", origin.line, e.to_string());
                    return Ok(());
                }
            };
            links.cohort.insert(subject);
            if in_eye_gaze || in_reflacx {
                links.cohort.dicom_subject.insert(dicom.clone(), subject);
                subset.tracked.push((links.cxr_rows.len(), dicom));
            }
            subset.times.push(study_time(field(f, c.date), field(f, c.time), settings.profile));
            links.cxr_rows.push(CxrRow {
                row: origin.row,
                subject,
                study: StudyId::parse(field(f, c.study)).ok(),
                in_eye_gaze,
                in_reflacx,
                stay: None,
                by_window: false,
                view: c.view.map_or(View::Unknown, |i| View::parse(field(f, i))),
            });
            Ok(())
        })?;
    if cols.is_none() {
        MetaColumns::of(&header, path)?;
    }
    subset.rows_read += rejects.total();
    links.cxr_header = header;
    links.cxr_rejects = rejects;
    links.cxr_source = path.to_path_buf();
    Ok(subset)
}

/// Streams edstays and keeps the stays of `subjects`; returns them with the rows read (the
/// kept ones and the malformed records).
pub(super) fn read_stays(
    path: &Path,
    sha256: Sha256Check,
    cancel: &CancelToken,
    subjects: &HashSet<SubjectId>,
    warnings: &mut Vec<LinkReject>,
) -> Result<(HashMap<SubjectId, Vec<Stay>>, u64), ReadError> {
    let mut stays: HashMap<SubjectId, Vec<Stay>> = HashMap::new();
    let mut cols: Option<[usize; 4]> = None;
    let mut kept = 0;
    let columns = |header: &Header| -> Result<[usize; 4], ReadError> {
        let col = |name| header.require(path, name);
        Ok([col("subject_id")?, col("stay_id")?, col("intime")?, col("outtime")?])
    };
    let (header, rejects) = SmallTable::visit::<ReadError>(path, sha256, cancel, |header, origin, _raw, f| {
        let [subject_col, stay_col, intime_col, outtime_col] = match cols {
            Some(c) => c,
            None => *cols.insert(columns(header)?),
        };
        let Ok(subject) = SubjectId::parse(field(f, subject_col)) else { return Ok(()) };
        if !subjects.contains(&subject) {
            return Ok(());
        }
        kept += 1;
        let parsed = (|| -> Result<Stay, String> {
            let stay_id = StayId::parse(field(f, stay_col)).map_err(|e| e.to_string())?;
            let intime = parse_datetime(field(f, intime_col))?;
            let outtime = parse_datetime(field(f, outtime_col))?;
            Ok(Stay { stay_id, intime, outtime })
        })();
        match parsed {
            Ok(stay) => stays.entry(subject).or_default().push(stay),
            Err(reason) => skip(warnings, "mimic-iv-ed/edstays", origin.line, reason),
        }
        Ok(())
    })?;
    if cols.is_none() {
        columns(&header)?;
    }
    Ok((stays, kept + rejects.total()))
}

/// Each image's stay (SPEC §3.5), and the eye-tracking images' stays by dicom.
pub(super) fn link_stays(subset: Subset, stays: &HashMap<SubjectId, Vec<Stay>>, window_days: u32, links: &mut Links) {
    for (row, when) in links.cxr_rows.iter_mut().zip(subset.times) {
        let (Some(t), Some(list)) = (when, stays.get(&row.subject)) else { continue };
        row.stay = pick_stay(list, t, window_days);
        row.by_window = row.stay.is_some_and(|id| list.iter().any(|s| s.stay_id == id && !s.holds(t)));
    }
    for (index, dicom) in subset.tracked {
        if let Some(stay) = links.cxr_rows[index].stay {
            links.stays_by_dicom.insert(dicom, stay);
        }
    }
}
