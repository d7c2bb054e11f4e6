//! End to end on a synth tree: headline counts, linking, fixes and copied folders in both
//! profiles, checked against what the generator planted.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::*;

fn walk(root: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in fs::read_dir(root).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            walk(&e.path(), out);
        } else {
            out.push(e.path());
        }
    }
}

fn world() -> World {
    World::synth(&["--patients", "30", "--others", "20", "--seed", "3"])
}

#[test]
fn paper_profile_matches_what_was_planted() {
    let w = world();
    let out = w.input.parent().unwrap().join("out");
    let s = build(&w.input, &out, &[]);
    let p = &w.planted;
    assert_balanced(&s);
    assert_eq!(s["profile"], "paper");
    assert_eq!(s["patients"], p["patients"]);
    assert_eq!(s["images"], p["images"]);
    assert_eq!(s["linked_images"], p["linked_images_paper"]);
    assert_eq!(s["stays"], p["stays_paper"]);
    assert!(s["failed"].as_object().unwrap().is_empty(), "{}", s["failed"]);

    // cxr_meta: every subset row; the stay-only file holds exactly the linked ones.
    let (h, rows) = csv_table(&out.join("spreadsheets/cxr_meta.csv"));
    assert_eq!(rows.len() as u64, p["images"].as_u64().unwrap());
    assert_eq!(&h[h.len() - 4..], ["in_eye_gaze", "in_reflacx", "StudyDateTime", "stay_id"]);
    let stay_col = col(&h, "stay_id");
    let linked: Vec<&Vec<String>> = rows.iter().filter(|r| !r[stay_col].is_empty()).collect();
    let (_, only) = csv_table(&out.join("spreadsheets/cxr_meta_with_stay_id_only.csv"));
    assert_eq!(only.len(), linked.len());
    // A study before 10:00 is padded and linked in paper.
    let t = col(&h, "StudyTime");
    let early = rows.iter().find(|r| r[t] == "80556.875").expect("planted early study");
    assert!(!early[stay_col].is_empty(), "early study not linked in paper");
    assert!(early[col(&h, "StudyDateTime")].ends_with(" 08:05:56.875"));

    // EyeGaze repair: counts per planted case, and the replaced rows land at their patient.
    let sh = &p["eye_gaze_short_ids"];
    let n = |k: &str| sh[k].as_u64().unwrap();
    let eg = &s["tables"]["egd-cxr/eye_gaze"];
    assert_eq!(eg["rejected"].as_u64().unwrap(), n("dropped_rows") + n("no_candidate_rows") + n("ambiguous_rows"));
    assert_eq!(eg["outside_cohort"].as_u64().unwrap(), n("calibration_rows"));
    let replaced = sh["replaced_id"].as_str().unwrap();
    let (mh, master) = csv_table(&out.join("spreadsheets/EyeGaze/master_sheet_with_updated_stayId.csv"));
    let owner = &master.iter().find(|r| r[col(&mh, "dicom_id")] == replaced).unwrap()[col(&mh, "patient_id")];
    let (gh, gaze) = csv_table(&out.join(format!("patient_{owner}/EyeGaze/eye_gaze.csv")));
    let with_full = gaze.iter().filter(|r| r[col(&gh, "DICOM_ID")] == replaced).count() as u64;
    assert_eq!(with_full, n("replaced_rows"));
    assert!(gaze.iter().all(|r| r[col(&gh, "DICOM_ID")].len() == 44));
    let rejects = fs::read_to_string(out.join(".mimic-eye/rejects/egd-cxr/eye_gaze.csv")).unwrap();
    assert!(
        rejects.contains("matches several valid ids")
            && rejects.contains("matches no valid id")
            && rejects.contains("dropped")
    );

    // Master sheet: the stale stay_id is replaced by the linked one (integer or empty).
    let cxr_stay: BTreeMap<&str, &str> =
        rows.iter().map(|r| (r[col(&h, "dicom_id")].as_str(), r[stay_col].as_str())).collect();
    for r in &master {
        assert_eq!(r[col(&mh, "stay_id")], cxr_stay[r[col(&mh, "dicom_id")].as_str()]);
    }
    assert_eq!(master.len(), s["eye_gaze"]["images"].as_u64().unwrap() as usize);

    // REFLACX: 21 merged classes; the source-only columns stay for the authors' loaders
    // (tests/reflacx_metadata.rs checks their values); every reading's subject has it.
    let (rh, readings) = csv_table(&out.join("spreadsheets/REFLACX/metadata.csv"));
    for source in ["Mass", "Nodule", "Emphysema", "Pleural effusion", "Pleural thickening"] {
        assert!(rh.contains(&source.to_string()), "{source} dropped from the merged metadata");
    }
    for kept in
        ["Lung nodule or mass", "High lung volume / emphysema", "Pleural abnormality", "Fracture", "Acute fracture"]
    {
        assert!(rh.contains(&kept.to_string()));
    }
    assert_eq!(readings.len() as u64, p["reflacx_readings"].as_u64().unwrap());
    let sid = readings[0][col(&rh, "subject_id")].clone();
    let (ph, prow) = csv_table(&out.join(format!("patient_{sid}/REFLACX/metadata.csv")));
    // A per-patient subset keeps all columns of the whole table.
    assert_eq!(ph, rh);
    assert!(!prow.is_empty());
}

#[test]
fn release_profile_reproduces_the_original_build() {
    let w = world();
    let out = w.input.parent().unwrap().join("out");
    let s = build(&w.input, &out, &["--profile", "release"]);
    assert_balanced(&s);
    assert_eq!(s["linked_images"], w.planted["linked_images_release"]);
    let (h, rows) = csv_table(&out.join("spreadsheets/cxr_meta.csv"));
    let t = col(&h, "StudyTime");
    let early = rows.iter().find(|r| r[t] == "80556.875").unwrap();
    assert!(early[col(&h, "stay_id")].is_empty(), "a study before 10:00 must not link in release");
    assert!(!early[col(&h, "StudyDateTime")].contains(' '), "release writes the float of the text");
    // Master sheet stays as pandas floats.
    let (mh, master) = csv_table(&out.join("spreadsheets/EyeGaze/master_sheet_with_updated_stayId.csv"));
    for r in &master {
        let v = &r[col(&mh, "stay_id")];
        assert!(v == "nan" || v.ends_with(".0"), "{v}");
    }
    // The original's slip: spreadsheets/EyeGaze/eye_gaze.csv is fixations.csv.
    assert_eq!(
        fs::read(out.join("spreadsheets/EyeGaze/eye_gaze.csv")).unwrap(),
        fs::read(out.join("spreadsheets/EyeGaze/fixations.csv")).unwrap()
    );
    // Labels untouched; fixations not repaired (short ids belong to nobody).
    let (rh, _) = csv_table(&out.join("spreadsheets/REFLACX/metadata.csv"));
    assert!(rh.contains(&"Mass".to_string()) && rh.contains(&"Lung nodule or mass".to_string()));
    let sh = &w.planted["eye_gaze_short_ids"];
    let n = |k: &str| sh[k].as_u64().unwrap();
    assert_eq!(s["tables"]["egd-cxr/fixations"]["rejected"].as_u64().unwrap(), 0);
    assert_eq!(
        s["tables"]["egd-cxr/eye_gaze"]["rejected"].as_u64().unwrap(),
        n("dropped_rows") + n("replaced_rows") + n("no_candidate_rows") + n("ambiguous_rows")
    );
}

#[test]
fn window_days_links_studies_near_a_stay() {
    let w = world();
    let out = w.input.parent().unwrap().join("out");
    let s = build(&w.input, &out, &["--window-days", "7"]);
    assert_eq!(s["linked_images"], w.planted["linked_images_window7"]);
    assert_eq!(s["window_days"], 7);
}

#[test]
fn copied_folders_are_byte_identical_hard_links_without_index_html() {
    let w = world();
    let out = w.input.parent().unwrap().join("out");
    let s = build(&w.input, &out, &[]);
    let mut files = Vec::new();
    walk(&out, &mut files);
    assert!(files.iter().all(|f| f.file_name().unwrap() != "index.html"), "index.html copied");
    let (mut jpgs, mut ellipses, mut reports) = (0, 0, 0);
    for f in &files {
        let rel = f.strip_prefix(&out).unwrap().to_string_lossy().to_string();
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with(".jpg") {
            // patient_<sid>/CXR-JPG/s<study>/<dicom>.jpg
            let parts: Vec<&str> = rel.split('/').collect();
            let sid = parts[0].trim_start_matches("patient_");
            let src = w.input.join(format!("mimic-cxr-jpg/files/p{}/p{sid}/{}/{}", &sid[..2], parts[2], parts[3]));
            assert_eq!(fs::read(f).unwrap(), fs::read(&src).unwrap());
            assert_eq!(fs::metadata(f).unwrap().ino(), fs::metadata(&src).unwrap().ino(), "not hard-linked");
            jpgs += 1;
        } else if name == "anomaly_location_ellipses.csv" {
            let text = fs::read_to_string(f).unwrap();
            let header = text.lines().next().unwrap();
            let cols: Vec<&str> = header.split(',').collect();
            // v1 files gain the merged targets beside their sources; v2 files have them already.
            assert!(cols.contains(&"Lung nodule or mass") && cols.contains(&"Pleural abnormality"), "{header}");
            assert!(text.contains("\r\n"), "CRLF kept");
            ellipses += 1;
        } else if rel.contains("/CXR-DICOM/") {
            reports += 1;
        }
    }
    assert_eq!(jpgs, s["images"].as_u64().unwrap());
    assert!(ellipses > 0 && reports > 0);
    // The hostile REFLACX id was rejected, counted, and nothing escaped the output folder.
    assert_eq!(
        s["tables"]["files/reflacx"]["rejected"].as_u64().unwrap(),
        w.planted["reflacx_bad_ids"].as_u64().unwrap()
    );
    assert!(!w.input.parent().unwrap().join("escape").exists());
    let top: Vec<String> = fs::read_dir(w.input.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    assert_eq!(top.len(), 2, "{top:?}");
}

#[test]
fn copy_mode_from_the_config_copies_and_flags_override_the_file() {
    let w = world();
    let root = w.input.parent().unwrap();
    let out = root.join("out");
    let config = root.join("mimic-eye.toml");
    fs::write(
        &config,
        format!(
            "input = {:?}\noutput = {:?}\nprofile = \"release\"\nfiles = \"copy\"\nindex_column = false\n",
            w.input, out
        ),
    )
    .unwrap();
    let mut cmd = bin();
    cmd.args(["build", "--config"]).arg(&config).args(["--profile", "paper"]);
    run_ok(&mut cmd);
    let s = summary(&out);
    assert_eq!(s["profile"], "paper", "the flag overrides the file");
    let mut files = Vec::new();
    walk(&out, &mut files);
    let jpg = files.iter().find(|f| f.extension().is_some_and(|e| e == "jpg")).unwrap();
    assert_eq!(fs::metadata(jpg).unwrap().nlink(), 1, "copied, not linked");
    // index_column = false: the header is the source header.
    let first = fs::read_to_string(out.join("spreadsheets/cxr_meta.csv")).unwrap();
    assert!(first.starts_with("dicom_id,"));
}

/// `--chart-rows-per-patient` gives chartevents its own row count (MIMIC-IV 3.1 has 2.7 times
/// as many chartevents rows as labevents rows), and a build reads and writes every one of them.
#[test]
fn chartevents_can_have_more_rows_per_patient_than_labevents() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let args = ["--patients", "6", "--others", "4", "--rows-per-patient", "3", "--chart-rows-per-patient", "8"];
    synth(&input, &args);
    let out = tmp.path().join("out");
    let s = build(&input, &out, &[]);
    // Every subject's rows plus the two planted defective rows.
    assert_eq!(s["tables"]["hosp/labevents"]["read"], 10 * 3 + 2);
    assert_eq!(s["tables"]["icu/chartevents"]["read"], 10 * 8 + 2);
    assert_eq!(s["tables"]["hosp/labevents"]["written"], 6 * 3);
    assert_eq!(s["tables"]["icu/chartevents"]["written"], 6 * 8);
}

/// The copied folders' file lists are kept on disk beside the manifests: an image that leaves
/// a study folder leaves the output, one that arrives is placed, a study folder that goes is
/// removed with its folder, and each job keeps one list (the last build's), whatever a crash
/// or a failed job left.
#[test]
fn images_leaving_and_arriving_between_builds_follow_and_each_job_keeps_one_list() {
    let w = world();
    let out = w.input.parent().unwrap().join("out");
    build(&w.input, &out, &[]);
    let jobs = out.join(".mimic-eye/jobs");
    let lists = || {
        let mut v: Vec<String> = fs::read_dir(&jobs)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".files"))
            .collect();
        v.sort();
        v
    };
    let first = lists();
    assert_eq!(first.len(), 4, "one list per copied-folder job: {first:?}");
    let mut outputs = Vec::new();
    walk(&out, &mut outputs);
    let jpgs: Vec<_> = outputs.iter().filter(|f| f.extension().is_some_and(|e| e == "jpg")).collect();
    // Two images of different studies: one study loses an image, the other loses its folder.
    let (one, other) = (jpgs[0], jpgs.iter().find(|f| f.parent() != jpgs[0].parent()).unwrap());
    let source_of = |f: &Path| {
        let rel = f.strip_prefix(&out).unwrap().to_string_lossy().to_string();
        let parts: Vec<&str> = rel.split('/').collect();
        let sid = parts[0].trim_start_matches("patient_");
        w.input.join(format!("mimic-cxr-jpg/files/p{}/p{sid}/{}/{}", &sid[..2], parts[2], parts[3]))
    };
    fs::remove_file(source_of(one)).unwrap();
    let arrived = source_of(one).with_file_name("arrived.jpg");
    fs::write(&arrived, b"\xff\xd8 a new image").unwrap();
    fs::remove_dir_all(source_of(other).parent().unwrap()).unwrap();
    // A list a crashed build left behind.
    fs::write(jobs.join("files__cxr-jpg.dead.files"), b"patient_1/x\0").unwrap();

    build(&w.input, &out, &[]);
    assert!(!one.exists(), "an image gone from the input is gone from the output");
    assert_eq!(fs::read(one.with_file_name("arrived.jpg")).unwrap(), b"\xff\xd8 a new image");
    assert!(!other.parent().unwrap().exists(), "a study folder gone from the input is removed");
    let second = lists();
    assert_eq!(second.len(), 4, "{second:?}");
    assert!(second.iter().all(|n| !first.contains(n)), "each build writes new lists and drops the old");
    // The new list is what the output holds.
    let listed =
        list_paths(&fs::read(jobs.join(second.iter().find(|n| n.starts_with("files__cxr-jpg.")).unwrap())).unwrap());
    let mut now = Vec::new();
    walk(&out, &mut now);
    let mut placed: Vec<String> = now
        .iter()
        .filter(|f| f.to_string_lossy().contains("/CXR-JPG/s"))
        .map(|f| f.strip_prefix(&out).unwrap().to_string_lossy().into_owned())
        .collect();
    placed.sort();
    assert_eq!(listed, placed);
    run_ok(bin().args(["verify", "--output"]).arg(&out));
}

/// The paths of a job's file list: each path ends with a NUL and is followed by a record tag
/// (0: not a copy; 1 or 2: a copy or clone, whose record is 89 more bytes).
fn list_paths(bytes: &[u8]) -> Vec<String> {
    let mut paths = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let end = at + bytes[at..].iter().position(|b| *b == 0).unwrap();
        paths.push(String::from_utf8(bytes[at..end].to_vec()).unwrap());
        at = end + 1 + if bytes[end + 1] == 0 { 1 } else { 90 };
    }
    paths
}

/// In `files = "copy"` mode a rebuild keeps every copy whose source is unchanged (same inode:
/// not copied again) in all four copied-folder jobs, the records of the copies live in the
/// jobs' file lists rather than in their manifests, and a source with new bytes (same size,
/// older mtime) is copied again.
#[test]
fn copies_are_kept_across_rebuilds_by_the_records_in_their_file_lists() {
    let w = world();
    let root = w.input.parent().unwrap();
    let out = root.join("out");
    let config = root.join("copy.toml");
    fs::write(&config, format!("input = {:?}\noutput = {:?}\nfiles = \"copy\"\n", w.input, out)).unwrap();
    let build = || run_ok(bin().args(["build", "--config"]).arg(&config));
    build();
    let copied = || {
        let mut files = Vec::new();
        walk(&out, &mut files);
        let copies = ["/CXR-JPG/", "/CXR-DICOM/", "/REFLACX/", "/audio_segmentation_transcripts/"];
        let inodes: BTreeMap<String, u64> = files
            .iter()
            .map(|f| f.strip_prefix(&out).unwrap().to_string_lossy().into_owned())
            .filter(|rel| copies.iter().any(|c| format!("/{rel}").contains(c)))
            .map(|rel| (rel.clone(), fs::metadata(out.join(&rel)).unwrap().ino()))
            .collect();
        inodes
    };
    let first = copied();
    for part in ["/CXR-JPG/", "/CXR-DICOM/", "/REFLACX/", "/audio_segmentation_transcripts/"] {
        assert!(first.keys().any(|k| k.contains(part)), "{part} copied");
    }
    let jobs = out.join(".mimic-eye/jobs");
    for job in ["files__cxr-jpg", "files__cxr-reports", "files__reflacx", "files__eye-gaze-transcripts"] {
        let manifest: serde_json::Value =
            serde_json::from_slice(&fs::read(jobs.join(format!("{job}.json"))).unwrap()).unwrap();
        assert!(manifest.get("copies").is_none(), "{job}: records in the list, not the manifest");
        assert_eq!(manifest["list"]["records"], true, "{job}");
    }

    assert_eq!(summary(&out)["files"]["kept"], 0);
    build();
    assert_eq!(copied(), first, "a rebuild copies nothing again");
    let files = &summary(&out)["files"];
    let copies = files["copied"].as_u64().unwrap();
    assert!(copies > 0 && files["written"].as_u64().unwrap() > 0, "{files}");
    assert_eq!(
        files["kept"].as_u64().unwrap(),
        copies + files["written"].as_u64().unwrap(),
        "every file kept: {files}"
    );

    // New bytes in one image, same size, the old mtime kept by the download.
    let (rel, _) = first.iter().find(|(k, _)| k.ends_with(".jpg")).unwrap();
    let parts: Vec<&str> = rel.split('/').collect();
    let sid = parts[0].trim_start_matches("patient_");
    let source = w.input.join(format!("mimic-cxr-jpg/files/p{}/p{sid}/{}/{}", &sid[..2], parts[2], parts[3]));
    let mtime = fs::metadata(&source).unwrap().modified().unwrap();
    let mut bytes = fs::read(&source).unwrap();
    bytes[0] ^= 0xff;
    fs::write(&source, &bytes).unwrap();
    fs::File::options().write(true).open(&source).unwrap().set_modified(mtime).unwrap();
    build();
    let second = copied();
    assert_eq!(fs::read(out.join(rel)).unwrap(), bytes, "the changed image is copied again");
    let changed: Vec<&String> = first.keys().filter(|k| first[*k] != second[*k]).collect();
    assert_eq!(changed, [rel], "only the changed image is copied again");
    let files = &summary(&out)["files"];
    assert_eq!(files["kept"].as_u64().unwrap() + 1, copies + files["written"].as_u64().unwrap(), "{files}");
    run_ok(bin().args(["verify", "--output"]).arg(&out));
}

/// A build's derived tables (cxr_meta, the stacked REFLACX metadata, the master sheet) depend
/// on what the link read and the settings only: a rebuild with neither changed does not write
/// them again, and a change to a linker table redoes them to what a clean build gives.
#[test]
fn derived_tables_are_redone_when_and_only_when_what_the_link_read_changed() {
    let w = world();
    let out = w.input.parent().unwrap().join("out");
    let debug_build = |out: &Path| {
        let mut cmd = bin();
        cmd.env("MIMIC_EYE_LOG", "mimic_eye=debug").args(["build", "--input"]).arg(&w.input).arg("--output").arg(out);
        String::from_utf8(run_ok(&mut cmd).stderr).unwrap()
    };
    let skipped = |log: &str, table: &str| {
        log.lines().any(|l| l.contains("unchanged: skipped") && l.contains(&format!("table=\"{table}\"")))
    };
    let derived = ["cxr_meta", "cxr_meta_with_stay_id_only", "reflacx/metadata", "egd-cxr/master_sheet"];
    let first = debug_build(&out);
    assert!(derived.iter().all(|t| !skipped(&first, t)), "a first build writes every derived table");
    let again = debug_build(&out);
    for table in derived {
        assert!(skipped(&again, table), "{table} was written again with nothing changed:\n{again}");
    }

    // A linker table changes: the age group of the first image of the master sheet.
    let sheet_out = out.join("spreadsheets/EyeGaze/master_sheet_with_updated_stayId.csv");
    let sheet_before = fs::read_to_string(&sheet_out).unwrap();
    let sheet = w.input.join("egd-cxr/master_sheet.csv");
    let text = fs::read_to_string(&sheet).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let age = lines[1].split(',').nth(6).unwrap().to_string();
    lines[1] = lines[1].replacen(&format!(",{age},"), ",100 - 110,", 1);
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::write(&sheet, lines.join("\n") + "\n").unwrap();
    let changed = debug_build(&out);
    assert!(!skipped(&changed, "egd-cxr/master_sheet"), "the changed master sheet was not redone");
    let clean = w.input.parent().unwrap().join("clean");
    build(&w.input, &clean, &[]);
    assert_eq!(tree(&out), tree(&clean), "the rebuild differs from a clean build");
    let sheet_after = fs::read_to_string(&sheet_out).unwrap();
    assert!(sheet_after != sheet_before && sheet_after.contains(",100 - 110,"), "{sheet_after}");
}
