//! Cohorts beyond the eye-tracking patients: every MIMIC-CXR-JPG patient (`--cohort cxr`) and a
//! researcher's list (`--cohort subjects:PATH`), checked file by file against the sources.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use common::*;

/// subject → its metadata rows (dicom ids), from the CXR-JPG metadata.
fn images_by_subject(input: &Path) -> BTreeMap<u64, Vec<String>> {
    let (h, rs) = csv_table(&input.join("mimic-cxr-jpg/mimic-cxr-2.0.0-metadata.csv"));
    let (s, d) = (col(&h, "subject_id"), col(&h, "dicom_id"));
    let mut out: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for r in rs {
        out.entry(r[s].parse().unwrap()).or_default().push(r[d].clone());
    }
    out
}

fn patient_folders(output: &Path) -> BTreeSet<u64> {
    fs::read_dir(output)
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("patient_")?.parse().ok())
        .collect()
}

/// Each patient's labevents file holds exactly its source rows, verbatim, with their row
/// numbers; each patient's CXR-JPG holds every image of theirs and its cxr_meta rows.
fn check_patients(input: &Path, output: &Path, cohort: &BTreeSet<u64>) {
    let labs = read_table(&input.join("mimiciv/hosp/labevents.csv"));
    let text = String::from_utf8(labs).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let s = header.split(',').position(|c| c == "subject_id").unwrap();
    let mut want: BTreeMap<u64, String> = BTreeMap::new();
    for (i, line) in lines.enumerate() {
        let Some(Ok(subject)) = line.split(',').nth(s).map(str::parse::<u64>) else { continue };
        if cohort.contains(&subject) {
            want.entry(subject).or_insert_with(|| format!(",{header}\n")).push_str(&format!("{i},{line}\n"));
        }
    }
    assert!(!want.is_empty());
    for (subject, expected) in &want {
        let got = fs::read_to_string(output.join(format!("patient_{subject}/Hosp/labevents.csv"))).unwrap();
        assert_eq!(&got, expected, "patient_{subject} labevents");
    }
    let images = images_by_subject(input);
    let (mh, meta) = csv_table(&output.join("spreadsheets/cxr_meta.csv"));
    let meta_subjects: BTreeSet<u64> = meta.iter().map(|r| r[col(&mh, "subject_id")].parse().unwrap()).collect();
    assert!(meta_subjects.is_subset(cohort), "cxr_meta holds subjects outside the cohort");
    for subject in cohort {
        let Some(dicoms) = images.get(subject) else { continue };
        // synth writes image files for the eye-tracking studies only; every one there is copied.
        let name = |p: &Path| p.file_stem().unwrap().to_string_lossy().to_string();
        let sources: BTreeSet<String> = walk(&input.join("mimic-cxr-jpg/files"))
            .iter()
            .filter(|p| p.to_string_lossy().contains(&format!("/p{subject}/")))
            .map(|p| name(p))
            .filter(|d| dicoms.contains(d))
            .collect();
        let copied: BTreeSet<String> = walk(&output.join(format!("patient_{subject}/CXR-JPG")))
            .iter()
            .filter(|p| p.extension().is_some_and(|x| x == "jpg"))
            .map(|p| name(p))
            .collect();
        assert_eq!(copied, sources, "patient_{subject}: every image there copied");
        let (_, own) = csv_table(&output.join(format!("patient_{subject}/CXR-JPG/cxr_meta.csv")));
        assert_eq!(own.len(), dicoms.len(), "patient_{subject}: a cxr_meta row per image");
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

#[test]
fn the_cxr_cohort_is_every_mimic_cxr_patient_with_all_their_images() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, output) = (tmp.path().join("in"), tmp.path().join("out"));
    let planted = synth(&input, &["--patients", "10", "--others", "12", "--plain"]);
    let s = build(&input, &output, &["--cohort", "cxr"]);
    assert_balanced(&s);
    let all: BTreeSet<u64> = images_by_subject(&input).keys().copied().collect();
    let eye_tracking: BTreeSet<u64> =
        planted["cohort"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert!(all.len() > eye_tracking.len(), "the CXR metadata has patients outside the eye-tracking cohort");
    assert_eq!(s["cohort"]["kind"], "cxr");
    assert_eq!(s["cohort"]["size"].as_u64().unwrap() as usize, all.len());
    assert_eq!(patient_folders(&output), all);
    check_patients(&input, &output, &all);
    // Every metadata row is in cxr_meta, with the flags of its datasets and the stay rule.
    let (mh, meta) = csv_table(&output.join("spreadsheets/cxr_meta.csv"));
    assert_eq!(meta.len(), images_by_subject(&input).values().map(Vec::len).sum::<usize>());
    let flagged = meta.iter().filter(|r| r[col(&mh, "in_eye_gaze")] == "True" || r[col(&mh, "in_reflacx")] == "True");
    assert_eq!(flagged.count() as u64, planted["images"].as_u64().unwrap(), "eye-tracking images flagged");
    // The eye-tracking patients' outputs are as in the default build.
    let default = tmp.path().join("default");
    build(&input, &default, &[]);
    for subject in &eye_tracking {
        for sub in ["REFLACX/metadata.csv", "EyeGaze/master_sheet.csv"] {
            let (a, b) =
                (default.join(format!("patient_{subject}/{sub}")), output.join(format!("patient_{subject}/{sub}")));
            assert_eq!(fs::read(&a).ok(), fs::read(&b).ok(), "{sub} of patient_{subject}");
        }
    }
}

#[test]
fn a_subjects_file_is_the_cohort_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, output) = (tmp.path().join("in"), tmp.path().join("out"));
    let planted = synth(&input, &["--patients", "10", "--others", "12", "--plain"]);
    let eye_tracking: Vec<u64> = planted["cohort"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    let outsider = *images_by_subject(&input).keys().find(|s| !eye_tracking.contains(s)).unwrap();
    let listed: BTreeSet<u64> = [eye_tracking[0], eye_tracking[1], outsider].into();
    let list = tmp.path().join("subjects.csv");
    fs::write(
        &list,
        format!(
            "subject_id\n# two eye-tracking patients and one other\n{}\n{}\n\n{}\n",
            eye_tracking[0], eye_tracking[1], outsider
        ),
    )
    .unwrap();
    let s = build(&input, &output, &["--cohort", &format!("subjects:{}", list.display())]);
    assert_balanced(&s);
    assert_eq!(s["cohort"]["kind"], "subjects");
    assert_eq!(s["cohort"]["size"], 3);
    assert_eq!(patient_folders(&output), listed);
    check_patients(&input, &output, &listed);
    // Eye-tracking data only for the listed patients who have it.
    assert!(!output.join(format!("patient_{outsider}/REFLACX")).exists());
    assert!(!output.join(format!("patient_{outsider}/EyeGaze")).exists());
    let (rh, readings) = csv_table(&output.join("spreadsheets/REFLACX/metadata.csv"));
    let with_folder: BTreeSet<u64> = walk(&output)
        .iter()
        .filter(|p| p.to_string_lossy().contains("/REFLACX/main_data/"))
        .filter_map(|p| p.strip_prefix(&output).ok()?.iter().next()?.to_str()?.strip_prefix("patient_")?.parse().ok())
        .collect();
    assert!(with_folder.is_subset(&listed), "REFLACX readings copied for unlisted patients");
    assert!(readings.len() > with_folder.len(), "the whole REFLACX sheet still lists every reading ({})", rh.len());
    // A bad line in the subjects file: the build fails naming the file and the line.
    fs::write(&list, "10000032\nnot-a-subject\n").unwrap();
    let out = bin()
        .args(["build", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .args(["--cohort", &format!("subjects:{}", list.display())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("subjects.csv: line 2 is not a subject_id"), "{err}");
}
