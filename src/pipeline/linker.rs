//! The linker actor: reads the small tables that decide who is in MIMIC-Eye and which emergency
//! stay each chest X-ray belongs to (SPEC §3), and hands the routing table to the table jobs.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;

use chrono::{Duration, NaiveDate, NaiveDateTime, NaiveTime};

use crate::cohort::{Cohort, CohortRule};
use crate::config::Profile;
use crate::ids::{DicomId, StayId, SubjectId};
use crate::pipeline::batch::Origin;
use crate::pipeline::error::ReadError;
use crate::pipeline::reader::{Header, SmallTable};
use crate::pyfmt::python_float_repr;
use crate::source::Sha256Check;

/// One ED stay of a subject; `None` times are open-ended.
#[derive(Debug, Clone, Copy)]
pub(super) struct Stay {
    pub stay_id: StayId,
    pub intime: Option<NaiveDateTime>,
    pub outtime: Option<NaiveDateTime>,
}

/// A row of the CXR subset (SPEC §3.2): the metadata record verbatim plus what Phase 1 adds.
#[derive(Debug, Clone)]
pub(crate) struct CxrRow {
    pub origin: Origin,
    pub raw: Vec<u8>,
    pub subject: SubjectId,
    pub study: Option<crate::ids::StudyId>,
    pub in_eye_gaze: bool,
    pub in_reflacx: bool,
    /// The `StudyDateTime` column as the profile writes it.
    pub study_datetime: String,
    pub stay: Option<StayId>,
}

/// The small tables the linker reads. Each is optional: a missing dataset is left out, and said.
#[derive(Debug, Default)]
pub(super) struct LinkInputs {
    pub cxr_metadata: Option<SmallTable>,
    pub edstays: Option<SmallTable>,
    pub reflacx_metadata: Vec<SmallTable>,
    pub master_sheet: Option<SmallTable>,
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
    pub stays_by_dicom: HashMap<DicomId, StayId>,
    pub eye_gaze_dicoms: BTreeSet<DicomId>,
    pub reflacx_dicoms: BTreeSet<DicomId>,
    pub eye_gaze_subjects: BTreeSet<SubjectId>,
    pub reflacx_subjects: BTreeSet<SubjectId>,
    pub warnings: Vec<LinkReject>,
    /// Records of the CXR metadata that could not be read (wrong field count…).
    pub cxr_rejects: crate::pipeline::batch::Rejects,
    pub cxr_source: std::path::PathBuf,
}

impl Links {
    pub(crate) fn linked_images(&self) -> usize {
        self.cxr_rows.iter().filter(|r| r.stay.is_some()).count()
    }
    pub(crate) fn stays(&self) -> usize {
        self.cxr_rows.iter().filter_map(|r| r.stay).collect::<HashSet<_>>().len()
    }
}

/// A field of a record being read (before it is kept).
fn split_field(fields: &[Vec<u8>], i: usize) -> &[u8] {
    fields.get(i).map_or(&[][..], Vec::as_slice)
}

/// Phase 1: the cohort and the stay links.
/// `rule`: who is in the cohort (the eye-tracking patients of SPEC §3, every CXR patient, or a
/// list); the metadata rows `load_inputs` kept under the same rule are the CXR subset.
pub(super) fn link(
    inputs: &LinkInputs,
    profile: Profile,
    window_days: u32,
    rule: &CohortRule,
) -> Result<Links, ReadError> {
    let mut links = Links::default();
    let mut warnings = Vec::new();
    collect_eye_gaze(inputs, &mut links, &mut warnings)?;
    collect_reflacx(inputs, &mut links, &mut warnings)?;
    let stays = match &inputs.edstays {
        Some(t) => read_stays(t, &mut warnings)?,
        None => HashMap::new(),
    };
    if let Some(meta) = &inputs.cxr_metadata {
        link_cxr_rows(meta, &stays, (profile, window_days, rule), &mut links, &mut warnings)?;
    }
    match rule {
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
    Ok(links)
}

/// EG: dicom_ids (and patients) of the EyeGaze master sheet.
fn collect_eye_gaze(inputs: &LinkInputs, links: &mut Links, warnings: &mut Vec<LinkReject>) -> Result<(), ReadError> {
    let Some(sheet) = &inputs.master_sheet else { return Ok(()) };
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
fn collect_reflacx(inputs: &LinkInputs, links: &mut Links, warnings: &mut Vec<LinkReject>) -> Result<(), ReadError> {
    for phase in &inputs.reflacx_metadata {
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

/// The CXR subset, in file order, each row with its study time and stay link (SPEC §3.4–5).
fn link_cxr_rows(
    meta: &SmallTable,
    stays: &HashMap<SubjectId, Vec<Stay>>,
    (profile, window_days, rule): (Profile, u32, &CohortRule),
    links: &mut Links,
    warnings: &mut Vec<LinkReject>,
) -> Result<(), ReadError> {
    let (dicom_col, subject_col) = (meta.require("dicom_id")?, meta.require("subject_id")?);
    let study_col = meta.require("study_id")?;
    let (date, time) = (meta.require("StudyDate")?, meta.require("StudyTime")?);
    links.cxr_header = meta.header.clone();
    links.cxr_rejects = meta.rejects.clone();
    links.cxr_source = meta.path.clone();
    for row in &meta.rows {
        let Ok(dicom) = DicomId::parse(row.fields.field(dicom_col)) else {
            continue;
        };
        let in_eye_gaze = links.eye_gaze_dicoms.contains(&dicom);
        let in_reflacx = links.reflacx_dicoms.contains(&dicom);
        if matches!(rule, CohortRule::EyeTracking) && !in_eye_gaze && !in_reflacx {
            continue;
        }
        let subject = match SubjectId::parse(row.fields.field(subject_col)) {
            Ok(s) => s,
            Err(e) => {
                skip(warnings, "mimic-cxr-jpg/metadata", row.line, e.to_string());
                continue;
            }
        };
        let (date_raw, time_raw) = (row.fields.field(date), row.fields.field(time));
        let when = study_time(date_raw, time_raw, profile);
        let study_datetime = match profile {
            Profile::Paper => when.map(format_study_time).unwrap_or_default(),
            Profile::Release => release_study_datetime(date_raw, time_raw),
        };
        let stay = when.and_then(|t| stays.get(&subject).and_then(|list| pick_stay(list, t, window_days)));
        links.cohort.insert(subject);
        if let Some(stay) = stay {
            links.stays_by_dicom.insert(dicom.clone(), stay);
        }
        links.cohort.dicom_subject.insert(dicom, subject);
        links.cxr_rows.push(CxrRow {
            origin: row.origin(),
            raw: row.raw.clone(),
            subject,
            study: crate::ids::StudyId::parse(row.fields.field(study_col)).ok(),
            in_eye_gaze,
            in_reflacx,
            study_datetime,
            stay,
        });
    }
    Ok(())
}

fn skip(warnings: &mut Vec<LinkReject>, table: &str, line: u64, reason: String) {
    tracing::warn!(table, line, reason, "linker skipped a row");
    warnings.push(LinkReject { table: table.to_string(), line, reason });
}

fn read_stays(table: &SmallTable, warnings: &mut Vec<LinkReject>) -> Result<HashMap<SubjectId, Vec<Stay>>, ReadError> {
    let subject_col = table.require("subject_id")?;
    let stay_col = table.require("stay_id")?;
    let intime_col = table.require("intime")?;
    let outtime_col = table.require("outtime")?;
    let mut stays: HashMap<SubjectId, Vec<Stay>> = HashMap::new();
    for row in &table.rows {
        let parsed = (|| -> Result<(SubjectId, Stay), String> {
            let subject = SubjectId::parse(row.fields.field(subject_col)).map_err(|e| e.to_string())?;
            let stay_id = StayId::parse(row.fields.field(stay_col)).map_err(|e| e.to_string())?;
            let intime = parse_datetime(row.fields.field(intime_col))?;
            let outtime = parse_datetime(row.fields.field(outtime_col))?;
            Ok((subject, Stay { stay_id, intime, outtime }))
        })();
        match parsed {
            Ok((subject, stay)) => stays.entry(subject).or_default().push(stay),
            Err(reason) => skip(warnings, "mimic-iv-ed/edstays", row.line, reason),
        }
    }
    Ok(stays)
}

/// `YYYY-MM-DD HH:MM:SS`; empty means open-ended.
fn parse_datetime(raw: &[u8]) -> Result<Option<NaiveDateTime>, String> {
    if raw.is_empty() {
        return Ok(None);
    }
    let text = std::str::from_utf8(raw).map_err(|_| "time is not UTF-8".to_string())?;
    // The value stays out of the reason: it is patient data, and reasons reach the logs.
    NaiveDateTime::parse_from_str(text.trim(), "%Y-%m-%d %H:%M:%S")
        .map(Some)
        .map_err(|e| format!("time is not YYYY-MM-DD HH:MM:SS ({} bytes): {e}", raw.len()))
}

/// The study time from `StudyDate` (`YYYYMMDD`) and `StudyTime` (`HHMMSS[.ffffff]` written as a
/// number, so leading zeros are lost). Profile `paper` pads the integer part to 6 digits;
/// `release` reproduces the original build, where a time before 10:00 never parsed.
pub(super) fn study_time(date: &[u8], time: &[u8], profile: Profile) -> Option<NaiveDateTime> {
    let date = std::str::from_utf8(date).ok()?.trim();
    let time = std::str::from_utf8(time).ok()?.trim();
    let date = NaiveDate::parse_from_str(date, "%Y%m%d").ok()?;
    let (int, frac) = time.split_once('.').unwrap_or((time, ""));
    if int.is_empty() || int.len() > 6 || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if profile == Profile::Release && int.len() < 6 {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let padded = format!("{int:0>6}");
    let (h, m, s) = (padded[0..2].parse().ok()?, padded[2..4].parse().ok()?, padded[4..6].parse().ok()?);
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let nanos: u32 = digits.parse().ok()?;
    Some(date.and_time(NaiveTime::from_hms_nano_opt(h, m, s, nanos)?))
}

/// `YYYY-MM-DD HH:MM:SS[.fff]`.
pub(super) fn format_study_time(t: NaiveDateTime) -> String {
    if t.and_utc().timestamp_subsec_nanos() == 0 {
        t.format("%Y-%m-%d %H:%M:%S").to_string()
    } else {
        t.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
    }
}

/// Profile `release`: the original build's float of the concatenated `StudyDate`·`StudyTime` text.
pub(super) fn release_study_datetime(date: &[u8], time: &[u8]) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(date).trim(), String::from_utf8_lossy(time).trim());
    match text.parse::<f64>() {
        Ok(v) => python_float_repr(v),
        Err(_) => "nan".to_string(),
    }
}

/// SPEC §3.5: exactly one stay with `intime < t < outtime`; else, with a window, the one nearest.
pub(super) fn pick_stay(stays: &[Stay], t: NaiveDateTime, window_days: u32) -> Option<StayId> {
    let strict: Vec<&Stay> =
        stays.iter().filter(|s| s.intime.is_none_or(|i| i < t) && s.outtime.is_none_or(|o| t < o)).collect();
    match strict.len() {
        1 => return Some(strict[0].stay_id),
        0 if window_days > 0 => {}
        _ => return None,
    }
    let window = Duration::days(i64::from(window_days));
    let mut best: Option<(Duration, StayId)> = None;
    let mut tie = false;
    for s in stays {
        let lo = s.intime.map(|i| i - window);
        let hi = s.outtime.map(|o| o + window);
        if lo.is_some_and(|lo| t < lo) || hi.is_some_and(|hi| t > hi) {
            continue;
        }
        // Distance from the study to the stay itself (0 would have matched strictly, bar edges).
        let distance = match (s.intime, s.outtime) {
            (Some(i), _) if t <= i => i - t,
            (_, Some(o)) if t >= o => t - o,
            _ => Duration::zero(),
        };
        match best {
            Some((d, _)) if distance > d => {}
            Some((d, _)) if distance == d => tie = true,
            _ => {
                best = Some((distance, s.stay_id));
                tie = false;
            }
        }
    }
    if tie {
        None
    } else {
        best.map(|(_, id)| id)
    }
}

/// Loads whichever linker tables exist; `None` (or empty) for a dataset that is absent.
///
/// The CXR metadata (377k rows in MIMIC-CXR-JPG) and edstays (425k) are streamed and only the
/// rows that matter are kept: the images of REFLACX and EyeGaze, then the stays of their subjects.
pub(super) fn load_inputs(
    cxr_metadata: Option<&Path>,
    edstays: Option<&Path>,
    reflacx_phases: &[std::path::PathBuf],
    master_sheet: Option<&Path>,
    sha256: &dyn Fn(&Path) -> Sha256Check,
    rule: &CohortRule,
) -> Result<LinkInputs, ReadError> {
    let read = |p: &Path| SmallTable::read_checked(p, sha256(p), |_, _| true);
    let master_sheet = master_sheet.map(read).transpose()?;
    let reflacx_metadata: Vec<SmallTable> = reflacx_phases.iter().map(|p| read(p)).collect::<Result<_, _>>()?;
    let mut dicoms: HashSet<Vec<u8>> = HashSet::new();
    let mut subjects: HashSet<Vec<u8>> = HashSet::new();
    for (table, subject_name) in
        master_sheet.iter().map(|t| (t, "patient_id")).chain(reflacx_metadata.iter().map(|t| (t, "subject_id")))
    {
        let (dicom_col, subject_col) = (table.require("dicom_id")?, table.require(subject_name)?);
        for row in &table.rows {
            dicoms.insert(row.fields.field(dicom_col).to_vec());
            subjects.insert(row.fields.field(subject_col).to_vec());
        }
    }
    if let CohortRule::Subjects(listed) = rule {
        subjects.extend(listed.iter().map(|s| s.to_string().into_bytes()));
    }
    let cxr_metadata = cxr_metadata
        .map(|p| {
            let mut cols = None;
            SmallTable::read_checked(p, sha256(p), |h, f| {
                let (dicom_col, subject_col) = *cols.get_or_insert_with(|| {
                    (h.find("dicom_id").unwrap_or(usize::MAX), h.find("subject_id").unwrap_or(usize::MAX))
                });
                match rule {
                    CohortRule::EyeTracking => dicoms.contains(split_field(f, dicom_col)),
                    CohortRule::Cxr => true,
                    CohortRule::Subjects(listed) => {
                        SubjectId::parse(split_field(f, subject_col)).is_ok_and(|id| listed.contains(&id))
                    }
                }
            })
        })
        .transpose()?;
    if let Some(meta) = &cxr_metadata {
        let subject_col = meta.require("subject_id")?;
        subjects.extend(meta.rows.iter().map(|r| r.fields.field(subject_col).to_vec()));
    }
    let edstays = edstays
        .map(|p| {
            let mut subject_col = None;
            SmallTable::read_checked(p, sha256(p), |h, f| {
                let col = *subject_col.get_or_insert_with(|| h.find("subject_id").unwrap_or(usize::MAX));
                subjects.contains(split_field(f, col))
            })
        })
        .transpose()?;
    Ok(LinkInputs { cxr_metadata, edstays, reflacx_metadata, master_sheet })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap()
    }
    fn stay(id: u64, i: &str, o: &str) -> Stay {
        Stay {
            stay_id: StayId::parse(id.to_string().as_bytes()).unwrap(),
            intime: (!i.is_empty()).then(|| t(i)),
            outtime: (!o.is_empty()).then(|| t(o)),
        }
    }

    #[test]
    fn study_time_pads_in_paper_and_fails_in_release() {
        let p = study_time(b"21800723", b"80556.875", Profile::Paper).unwrap();
        assert_eq!(format_study_time(p), "2180-07-23 08:05:56.875");
        assert!(study_time(b"21800723", b"80556.875", Profile::Release).is_none());
        let r = study_time(b"21800506", b"213014.531", Profile::Release).unwrap();
        assert_eq!(format_study_time(r), "2180-05-06 21:30:14.531");
        // Python's repr(float("21800506213014.531")) is "21800506213014.53": pandas wrote that.
        assert_eq!(release_study_datetime(b"21800506", b"213014.531"), "21800506213014.53");
        assert_eq!(release_study_datetime(b"21800723", b"80556.875"), "2180072380556.875");
        assert_eq!(release_study_datetime(b"21800506", b"151208.0"), "21800506151208.0");
    }

    #[test]
    fn strict_window_exactly_one() {
        let stays = [stay(31, "2180-05-06 19:17:00", "2180-05-06 23:30:00"), stay(32, "2180-06-01 10:00:00", "")];
        let id = |v: Option<StayId>| v.map(StayId::get);
        assert_eq!(id(pick_stay(&stays, t("2180-05-06 21:30:14"), 0)), Some(31));
        assert_eq!(id(pick_stay(&stays, t("2180-05-06 19:17:00"), 0)), None, "exactly at intime");
        assert_eq!(id(pick_stay(&stays, t("2190-01-01 00:00:00"), 0)), Some(32), "open-ended outtime");
        assert_eq!(id(pick_stay(&stays, t("2180-05-08 00:00:00"), 0)), None);
        assert_eq!(id(pick_stay(&stays, t("2180-05-08 00:00:00"), 7)), Some(31), "within window");
        let overlapping = [
            stay(41, "2180-01-01 00:00:00", "2180-01-02 00:00:00"),
            stay(42, "2180-01-01 12:00:00", "2180-01-03 00:00:00"),
        ];
        assert_eq!(id(pick_stay(&overlapping, t("2180-01-01 18:00:00"), 7)), None, "two strict matches");
    }
}
