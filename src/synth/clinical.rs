//! Synthetic MIMIC-IV (hosp, icu) and MIMIC-IV-ED tables in their exact headers, or a copy of
//! real MIMIC-IV tables (the demo) with ED tables made for its subjects.

use std::fs;
use std::path::Path;

use anyhow::Context;

use super::imaging::World;
use super::spec::{Order, Rng, Subject, SynthSpec, TableOut};
use crate::pipeline::small_table::SmallTable;

const LABEVENTS: &str = "labevent_id,subject_id,hadm_id,specimen_id,itemid,order_provider_id,charttime,storetime,value,valuenum,valueuom,ref_range_lower,ref_range_upper,flag,priority,comments";
const CHARTEVENTS: &str =
    "subject_id,hadm_id,stay_id,caregiver_id,charttime,storetime,itemid,value,valuenum,valueuom,warning";

/// The tables MIMIC-IV 1.0 kept in `core/` (2.0 moved them to `hosp/`).
const CORE_TABLES: [&str; 3] = ["admissions", "patients", "transfers"];

/// Where a hosp table goes: `core/` for the three core tables when writing a 1.0 layout.
fn hosp_table_dir(root: &Path, table: &str, core: bool) -> std::path::PathBuf {
    if core && CORE_TABLES.contains(&table) {
        root.join("core")
    } else {
        root.join("hosp")
    }
}

/// Copies real hosp/icu tables; the first `patients` subjects (by id) form the cohort. With
/// `core`, admissions, patients and transfers go to `core/` as in MIMIC-IV 1.0.
pub(super) fn copy_mimiciv(src: &Path, dest: &Path, patients: usize, core: bool) -> anyhow::Result<Vec<Subject>> {
    for module in ["hosp", "icu"] {
        let from = src.join(module);
        for entry in fs::read_dir(&from).with_context(|| format!("reading {}", from.display()))?.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                let table = crate::input::table_name(&entry.path()).unwrap_or_default();
                let to = if module == "hosp" { hosp_table_dir(dest, &table, core) } else { dest.join(module) };
                fs::create_dir_all(&to)?;
                fs::copy(entry.path(), to.join(entry.file_name()))?;
            }
        }
    }
    let scan = crate::input::scan_folder(&src.join("hosp"), src, crate::config::BothForms::Csv)?;
    let table = scan
        .tables
        .into_iter()
        .find(|(n, _)| n == "patients")
        .map(|(_, p)| p)
        .context("no hosp/patients table in the MIMIC-IV folder")?;
    let patients_table = SmallTable::read(&table)?;
    let col = patients_table.require("subject_id")?;
    let mut ids: Vec<u64> = patients_table
        .rows
        .iter()
        .filter_map(|r| std::str::from_utf8(r.fields.field(col)).ok()?.parse().ok())
        .collect();
    ids.sort_unstable();
    Ok(ids
        .into_iter()
        .enumerate()
        .map(|(i, id)| Subject { id, in_cohort: i < patients, index: if i < patients { i } else { i - patients } })
        .collect())
}

/// Fake hosp and icu tables; labevents and chartevents hold `rows_per_patient` rows per subject.
/// With `core`, admissions, patients and transfers go to `core/` as in MIMIC-IV 1.0.
pub(super) fn write_mimiciv(
    root: &Path,
    subjects: &[Subject],
    world: &World,
    spec: &SynthSpec,
    core: bool,
    rng: &mut Rng,
) -> anyhow::Result<()> {
    let first_hadm: HadmOf = world.stays.iter().rev().map(|st| (st.subject, st.hadm_id)).collect();
    write_people(root, subjects, world, spec.gzip, core, &first_hadm, rng)?;
    write_dictionaries(root, spec.gzip, rng)?;
    write_events(root, subjects, spec, &first_hadm, rng)
}

/// Each subject's first admission (29999999 for one without any).
type HadmOf = std::collections::HashMap<u64, u64>;

fn hadm(first: &HadmOf, subject: u64) -> u64 {
    first.get(&subject).copied().unwrap_or(29_999_999)
}

/// patients, admissions, diagnoses_icd, transfers (the ED stays) and icustays.
fn write_people(
    root: &Path,
    subjects: &[Subject],
    world: &World,
    gz: bool,
    core: bool,
    first_hadm: &HadmOf,
    rng: &mut Rng,
) -> anyhow::Result<()> {
    let (hosp, icu) = (root.join("hosp"), root.join("icu"));
    let hosp_for = |table: &str| hosp_table_dir(root, table, core);
    let hadm_of = |s: u64| hadm(first_hadm, s);
    let mut patients = TableOut::mimic(
        &hosp_for("patients"),
        "patients",
        "subject_id,gender,anchor_age,anchor_year,anchor_year_group,dod",
        gz,
    )?;
    let mut admissions = TableOut::mimic(&hosp_for("admissions"), "admissions", "subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,admit_provider_id,admission_location,discharge_location,insurance,language,marital_status,race,edregtime,edouttime,hospital_expire_flag", gz)?;
    let mut diagnoses = TableOut::mimic(&hosp, "diagnoses_icd", "subject_id,hadm_id,seq_num,icd_code,icd_version", gz)?;
    let mut transfers = TableOut::mimic(
        &hosp_for("transfers"),
        "transfers",
        "subject_id,hadm_id,transfer_id,eventtype,careunit,intime,outtime",
        gz,
    )?;
    let mut icustays = TableOut::mimic(
        &icu,
        "icustays",
        "subject_id,hadm_id,stay_id,first_careunit,last_careunit,intime,outtime,los",
        gz,
    )?;
    for s in subjects {
        let dod = if s.id % 7 == 0 { "2180-09-09" } else { "" };
        patients.line(&format!("{},{},{},2180,2011 - 2013,{dod}", s.id, rng.pick(&["F", "M"]), 20 + rng.below(70)))?;
        let hadm = hadm_of(s.id);
        admissions.line(&format!(
            "{},{hadm},2180-05-06 22:23:00,2180-05-07 17:15:00,,URGENT,P{:05X},TRANSFER FROM HOSPITAL,HOME,Other,ENGLISH,WIDOWED,WHITE,2180-05-06 19:17:00,2180-05-06 23:30:00,0",
            s.id, rng.below(0xFFFFF)
        ))?;
        diagnoses.line(&format!("{},{hadm},1,5723,9", s.id))?;
        diagnoses.line(&format!("{},{hadm},2,V707,9", s.id))?;
        icustays.line(&format!(
            "{},{hadm},3{:07},MICU,MICU,2180-07-23 14:00:00,2180-07-23 23:50:47,0.41025462962962965",
            s.id,
            rng.below(9_999_999)
        ))?;
    }
    for st in &world.stays {
        transfers.line(&format!(
            "{},{},{},ED,Emergency Department,{},{}",
            st.subject, st.hadm_id, st.stay_id, st.intime, st.outtime
        ))?;
    }
    for t in [patients, admissions, diagnoses, transfers, icustays] {
        t.finish()?;
    }
    Ok(())
}

/// The dictionaries and the tables without subject_id.
fn write_dictionaries(root: &Path, gz: bool, rng: &mut Rng) -> anyhow::Result<()> {
    let (hosp, icu) = (root.join("hosp"), root.join("icu"));
    let mut d_labitems = TableOut::mimic(&hosp, "d_labitems", "itemid,label,fluid,category", gz)?;
    d_labitems.line("50808,Free Calcium,Blood,Blood Gas")?;
    d_labitems.line("51277,\"RDW, whole blood\",Blood,Hematology")?;
    d_labitems.finish()?;
    let mut d_hcpcs = TableOut::mimic(&hosp, "d_hcpcs", "code,category,long_description,short_description", gz)?;
    d_hcpcs.line("TD   ,,Rn,Rn")?;
    d_hcpcs.line("A0428,,\"Ambulance service, basic life support, non-emergency transport, (bls)\",Bls")?;
    d_hcpcs.finish()?;
    let mut provider = TableOut::mimic(&hosp, "provider", "provider_id", gz)?;
    for _ in 0..20 {
        provider.line(&format!("P{:05X}", rng.below(0xFFFFF)))?;
    }
    provider.finish()?;
    let mut d_items = TableOut::mimic(
        &icu,
        "d_items",
        "itemid,label,abbreviation,linksto,category,unitname,param_type,lownormalvalue,highnormalvalue",
        gz,
    )?;
    d_items.line("220045,Heart Rate,HR,chartevents,Routine Vital Signs,bpm,Numeric,,")?;
    d_items.line("227969,Safety Measures,Safety Measures,chartevents,Safety,,Text,,")?;
    d_items.finish()?;
    let mut caregiver = TableOut::mimic(&icu, "caregiver", "caregiver_id", gz)?;
    for c in [444, 1016, 6770] {
        caregiver.line(&c.to_string())?;
    }
    caregiver.finish()?;
    Ok(())
}

/// labevents and chartevents: `rows_per_patient` rows per subject, quoting and defects planted.
fn write_events(
    root: &Path,
    subjects: &[Subject],
    spec: &SynthSpec,
    first_hadm: &HadmOf,
    rng: &mut Rng,
) -> anyhow::Result<()> {
    let (hosp, icu) = (root.join("hosp"), root.join("icu"));
    let hadm_of = |s: u64| hadm(first_hadm, s);
    let chart_rows = spec.chart_rows_per_patient.unwrap_or(spec.rows_per_patient);
    write_big(&hosp, "labevents", LABEVENTS, subjects, (spec, spec.rows_per_patient), rng, |rng, s, n| {
        let comment = match n % 997 {
            0 => "\"Hemolyzed, results may be affected.\nLine two: \"\"repeat\"\" advised\"",
            1..=20 => "\"Verified by repeat analysis, see note.\"",
            _ => "",
        };
        let value = if n % 50 == 0 { "___".to_string() } else { format!("{}.{}", rng.below(200), rng.below(10)) };
        format!(
            "{n},{s},{},{},{},,2180-05-06 {:02}:{:02}:00,2180-05-06 23:59:00,{value},{value},mg/dL,10.5,15.5,{},ROUTINE,{comment}",
            hadm_of(s), 1_000_000 + n / 8, 50800 + rng.below(900), rng.below(24), rng.below(60),
            if n % 9 == 0 { "abnormal" } else { "" }
        )
    })?;
    write_big(&icu, "chartevents", CHARTEVENTS, subjects, (spec, chart_rows), rng, |rng, s, n| {
        let value = match n % 11 {
            0 => "On ,,".to_string(),
            1 => "\"Quiet, calm space\",,".to_string(),
            _ => {
                let v = 40 + rng.below(100);
                format!("{v},{v},bpm")
            }
        };
        format!(
            "{s},{},3{:07},6770,2180-05-06 {:02}:00:00,2180-05-06 23:45:00,{},{value},0",
            hadm_of(s),
            s % 9_999_999,
            n % 24,
            220000 + rng.below(8000)
        )
    })?;
    Ok(())
}

/// A big table, `rows_per_patient` rows per subject, row by row: grouped by subject, or each
/// row's subject drawn at random. Two defective rows are planted (a malformed subject_id and a
/// short row).
fn write_big(
    dir: &Path,
    name: &str,
    header: &str,
    subjects: &[Subject],
    (spec, rows_per_patient): (&SynthSpec, usize),
    rng: &mut Rng,
    mut row: impl FnMut(&mut Rng, u64, u64) -> String,
) -> anyhow::Result<()> {
    let mut t = TableOut::mimic(dir, name, header, spec.gzip)?;
    let total = (subjects.len() * rows_per_patient) as u64;
    let mut n = 0u64;
    let mut emit = |t: &mut TableOut, rng: &mut Rng, s: u64| -> anyhow::Result<()> {
        n += 1;
        t.line(&row(rng, s, n))?;
        Ok(())
    };
    match spec.order {
        Order::Grouped => {
            for s in subjects {
                for _ in 0..rows_per_patient {
                    emit(&mut t, rng, s.id)?;
                }
            }
        }
        Order::Shuffled => {
            for _ in 0..total {
                let s = subjects[rng.below(subjects.len() as u64) as usize].id;
                emit(&mut t, rng, s)?;
            }
        }
    }
    let bad = row(rng, 1, 0);
    t.line(&bad.replacen('1', "1000003X", 1))?;
    t.line("1,2,3")?;
    t.finish()?;
    Ok(())
}

/// MIMIC-IV-ED tables for the planned stays (and one stay per subject outside the cohort).
pub(super) fn write_ed(
    dir: &Path,
    _subjects: &[Subject],
    world: &World,
    gz: bool,
    rng: &mut Rng,
) -> anyhow::Result<()> {
    let mut edstays = TableOut::mimic(
        dir,
        "edstays",
        "subject_id,hadm_id,stay_id,intime,outtime,gender,race,arrival_transport,disposition",
        gz,
    )?;
    let mut triage = TableOut::mimic(
        dir,
        "triage",
        "subject_id,stay_id,temperature,heartrate,resprate,o2sat,sbp,dbp,pain,acuity,chiefcomplaint",
        gz,
    )?;
    let mut vitalsign = TableOut::mimic(
        dir,
        "vitalsign",
        "subject_id,stay_id,charttime,temperature,heartrate,resprate,o2sat,sbp,dbp,rhythm,pain",
        gz,
    )?;
    let mut diagnosis =
        TableOut::mimic(dir, "diagnosis", "subject_id,stay_id,seq_num,icd_code,icd_version,icd_title", gz)?;
    let mut medrecon = TableOut::mimic(
        dir,
        "medrecon",
        "subject_id,stay_id,charttime,name,gsn,ndc,etc_rn,etccode,etcdescription",
        gz,
    )?;
    let mut pyxis = TableOut::mimic(dir, "pyxis", "subject_id,stay_id,charttime,med_rn,name,gsn_rn,gsn", gz)?;
    for st in &world.stays {
        let (s, id) = (st.subject, st.stay_id);
        edstays.line(&format!("{s},{},{id},{},{},F,WHITE,AMBULANCE,ADMITTED", st.hadm_id, st.intime, st.outtime))?;
        triage.line(&format!(
            "{s},{id},98.{},{}.0,18.0,97.0,116.0,88.0,{},3.0,\"Abdominal distention, SOB\"",
            rng.below(10),
            60 + rng.below(40),
            rng.pick(&["10", "0", "UA", "unable"])
        ))?;
        for k in 0..2 {
            vitalsign.line(&format!(
                "{s},{id},{},97.8,79.0,16.0,98.0,112,64,,{k}",
                st.intime + chrono::Duration::minutes(13 + 30 * k)
            ))?;
        }
        diagnosis.line(&format!("{s},{id},1,R188,10,OTHER ASCITES"))?;
        medrecon.line(&format!("{s},{id},{},furosemide,008209,00054429731,1,00000564,Diuretic - Loop", st.intime))?;
        pyxis.line(&format!("{s},{id},{},1,Ondansetron,1,061716", st.intime))?;
    }
    for t in [edstays, triage, vitalsign, diagnosis, medrecon, pyxis] {
        t.finish()?;
    }
    Ok(())
}
