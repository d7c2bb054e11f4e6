//! Broken and hostile inputs: each case feeds the real binary and checks for a clear error
//! (file, line or byte offset, cause), no lost rows, and nothing written outside the output.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;

fn world(rows_per_patient: u32) -> World {
    let rows = rows_per_patient.to_string();
    World::synth(&["--patients", "8", "--others", "4", "--rows-per-patient", &rows, "--plain"])
}

/// What only these tests ask of a world.
trait BadInputWorld {
    fn build_via(&self, wrapper: &[&str]) -> Output;
    fn summary(&self) -> serde_json::Value;
    fn assert_nothing_outside(&self);
}

impl BadInputWorld for World {
    /// The same build run through `wrapper` (setpriv, prlimit…), which ends with the binary.
    fn build_via(&self, wrapper: &[&str]) -> Output {
        std::process::Command::new(wrapper[0])
            .args(&wrapper[1..])
            .arg(env!("CARGO_BIN_EXE_mimic-eye"))
            .args(["build", "--input"])
            .arg(&self.input)
            .arg("--output")
            .arg(&self.output)
            .env("MIMIC_EYE_LOG", "error")
            .output()
            .unwrap()
    }
    fn summary(&self) -> serde_json::Value {
        summary(&self.output)
    }
    /// Nothing but the input, the output (and test scratch files) under the root.
    fn assert_nothing_outside(&self) {
        for e in fs::read_dir(&self.root).unwrap().flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            assert!(n == "in" || n == "out" || n.starts_with("keep"), "unexpected {n} next to the output");
        }
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// The one-line cause a failed command ends with (log lines may come before it).
fn cause(o: &Output) -> String {
    let err = stderr(o);
    let last = err.lines().last().unwrap_or("").to_string();
    assert!(last.starts_with("mimic-eye: "), "no one-line cause at the end: {err}");
    last
}

#[test]
fn bad_rows_are_rejected_with_file_line_and_reason_and_nothing_is_lost() {
    let w = world(5);
    let s = w.subject(0);
    let path = w.input.join("mimiciv/hosp/labevents.csv");
    let header = "labevent_id,subject_id,hadm_id,specimen_id,itemid,order_provider_id,charttime,storetime,value,valuenum,valueuom,ref_range_lower,ref_range_upper,flag,priority,comments";
    let good = format!("1,{s},2,3,50808,,2180-01-01 00:00:00,,1,1,mg,,,,ROUTINE,");
    let body = [
        header.to_string(),
        good.clone(),                                               // line 2
        format!("2,{s},too,few"),                                   // line 3: too few fields
        format!("{good},extra"),                                    // line 4: too many
        good.replacen(&s.to_string(), "10000X32", 1),               // line 5: non-numeric id
        good.replacen(&s.to_string(), "", 1),                       // line 6: empty id
        good.replacen(&s.to_string(), "../../etc", 1),              // line 7: a path
        good.replacen(&s.to_string(), "1234567890123456789012", 1), // line 8: over-long
        format!("9,{s},2,3,50808,,x,,\"unterminated"),              // line 9: quote never closed
    ]
    .join("\n");
    fs::write(&path, body).unwrap();
    let out = w.build();
    assert!(out.status.success(), "{}", stderr(&out));
    let t = &w.summary()["tables"]["hosp/labevents"];
    assert_eq!(t["read"], 8);
    assert_eq!(t["written"], 1);
    assert_eq!(t["rejected"], 7);
    assert_balanced(&w.summary());
    let mut r = csv::Reader::from_path(w.output.join(".mimic-eye/rejects/hosp/labevents.csv")).unwrap();
    let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
    let lines: Vec<&str> = rows.iter().map(|r| &r[1]).collect();
    assert_eq!(lines, ["3", "4", "5", "6", "7", "8", "9"]);
    for r in &rows {
        assert!(r[0].ends_with("mimiciv/hosp/labevents.csv"), "source file: {}", &r[0]);
    }
    assert!(rows[0][3].contains("wrong field count: expected 16, found 4"));
    assert!(rows[2][3].contains("subject_id is not a number"));
    assert!(rows[3][3].contains("empty subject_id"));
    assert!(rows[5][3].contains("at most 18 digits"));
    assert!(rows[6][3].contains("unterminated quote"));
    // The rejected record is kept verbatim.
    assert_eq!(&rows[4][4], good.replacen(&s.to_string(), "../../etc", 1));
    w.assert_nothing_outside();
}

#[test]
fn unreadable_tables_fail_with_file_offset_and_cause_and_keep_their_previous_output() {
    let w = world(5);
    assert!(w.build().status.success());
    let labevents = w.output.join(format!("patient_{}/Hosp/labevents.csv", w.subject(0)));
    let before = fs::read(&labevents).unwrap();
    let plain = fs::read(w.input.join("mimiciv/hosp/labevents.csv")).unwrap();
    fs::remove_file(w.input.join("mimiciv/hosp/labevents.csv")).unwrap();
    let gz_path = w.input.join("mimiciv/hosp/labevents.csv.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&plain).unwrap();
    let gz = enc.finish().unwrap();

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated gzip", gz[..gz.len() * 2 / 3].to_vec(), "byte"),
        ("trailing garbage", [&gz[..], b"this is not gzip at all"].concat(), "byte"),
        ("not gzip", plain.clone(), "byte"),
        ("empty", Vec::new(), "byte"),
    ];
    for (name, bytes, _) in &cases {
        fs::write(&gz_path, bytes).unwrap();
        let out = w.build();
        assert!(!out.status.success(), "{name}: the build must fail");
        let err = cause(&out);
        assert!(err.contains("labevents.csv.gz"), "{name}: error names no file: {err}");
        assert!(err.contains("at input byte") && err.contains("decoded byte"), "{name}: no offset: {err}");
        if *name == "empty" {
            assert!(err.contains("unexpected end of file (at input byte 0"), "{err}");
        }
        assert_eq!(fs::read(&labevents).unwrap(), before, "{name}: previous output changed");
        assert!(w.summary()["failed"]["hosp/labevents"].is_string());
    }
    // A table missing a required column, and a file that is only a header.
    fs::write(&gz_path, &gz).unwrap();
    let chexpert = w.input.join("mimic-cxr-jpg/mimic-cxr-2.0.0-chexpert.csv");
    fs::write(&chexpert, "study_id,Atelectasis\n50000001,1.0\n").unwrap();
    fs::write(w.input.join("mimiciv/hosp/omr.csv"), "subject_id,chartdate,seq_num,result_name,result_value\n").unwrap();
    fs::write(w.input.join("mimiciv/hosp/services.csv"), "").unwrap();
    let out = w.build();
    assert!(!out.status.success());
    let s = w.summary();
    let empty = s["failed"]["hosp/services"].as_str().unwrap();
    assert!(empty.contains("services.csv: the file is empty (no header line)"), "{empty}");
    let err = s["failed"]["mimic-cxr-jpg/chexpert"].as_str().unwrap();
    assert!(
        err.contains("mimic-cxr-2.0.0-chexpert.csv") && err.contains("missing required column \"subject_id\""),
        "{err}"
    );
    assert_eq!(s["tables"]["hosp/omr"]["read"], 0);
    assert!(!w.output.join(format!("patient_{}/Hosp/omr.csv", w.subject(0))).exists());
    assert!(s["tables"]["hosp/labevents"]["read"].as_u64().unwrap() > 0, "labevents recovered once fixed");
    assert_balanced(&s);
}

#[test]
fn hostile_ids_never_become_paths_and_symlinks_out_of_the_input_are_not_followed() {
    let w = world(5);
    // EyeGaze rows and bounding boxes with path-like DICOM ids.
    let eye_gaze = w.input.join("egd-cxr/bounding_boxes.csv");
    let mut f = fs::OpenOptions::new().append(true).open(&eye_gaze).unwrap();
    for bad in ["../../../../tmp/evil", "/etc/passwd", "a\0b", "x/y", &"f".repeat(5000)] {
        writeln!(f, "{bad},cardiac silhouette,1.0,2.0,3.0,4.0").unwrap();
    }
    drop(f);
    // A symlink inside a copied study folder pointing outside the input tree, and one inside it.
    let secret = w.root.join("keep-secret.txt");
    fs::write(&secret, "not for the output").unwrap();
    let sid = w.subject(0).to_string();
    let study_dir = fs::read_dir(w.input.join(format!("mimic-cxr-jpg/files/p{}/p{sid}", &sid[..2])))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::os::unix::fs::symlink(&secret, study_dir.join("escape.jpg")).unwrap();
    let inside = fs::read_dir(&study_dir)
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "jpg") && !e.file_type().unwrap().is_symlink())
        .unwrap()
        .path();
    std::os::unix::fs::symlink(&inside, study_dir.join("alias.jpg")).unwrap();

    let out = w.build();
    assert!(out.status.success(), "{}", stderr(&out));
    let s = w.summary();
    assert_balanced(&s);
    assert_eq!(s["tables"]["egd-cxr/bounding_boxes"]["rejected"], 5);
    let rejects = fs::read_to_string(w.output.join(".mimic-eye/rejects/egd-cxr/bounding_boxes.csv")).unwrap();
    assert!(rejects.contains("unroutable DICOM id"));
    assert_eq!(s["tables"]["files/cxr-jpg"]["rejected"], 1, "the escaping symlink is refused and counted");
    let study = study_dir.file_name().unwrap().to_string_lossy().to_string();
    let copied = w.output.join(format!("patient_{sid}/CXR-JPG/{study}"));
    assert!(!copied.join("escape.jpg").exists());
    assert_eq!(fs::read(copied.join("alias.jpg")).unwrap(), fs::read(&inside).unwrap());
    assert!(!Path::new("/tmp/evil").exists());
    w.assert_nothing_outside();
    // Every output path is made of safe parts.
    let mut files = Vec::new();
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), out)
            } else {
                out.push(e.path())
            }
        }
    }
    walk(&w.output, &mut files);
    for f in files {
        let rel = f.strip_prefix(&w.output).unwrap().to_string_lossy().to_string();
        assert!(!rel.contains("..") && !rel.contains("passwd") && !rel.contains("evil"), "{rel}");
    }
}

#[test]
fn missing_datasets_optional_goes_on_required_fails_at_start() {
    let w = world(5);
    fs::rename(w.input.join("egd-cxr"), w.root.join("keep-egd")).unwrap();
    let out = w.build();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("dataset missing"), "not said: {}", stderr(&out));
    let s = w.summary();
    assert_eq!(s["missing_datasets"][0], "egd-cxr");
    assert_eq!(s["eye_gaze"]["images"], 0);
    assert!(s["reflacx"]["images"].as_u64().unwrap() > 0);

    fs::rename(w.input.join("mimiciv"), w.root.join("keep-mimiciv")).unwrap();
    let out = w.build();
    assert!(!out.status.success());
    let err = cause(&out);
    assert!(err.contains("required dataset MIMIC-IV is missing") && err.contains("mimiciv/hosp"), "{err}");
}

#[test]
fn an_unreadable_input_file_fails_its_table_only() {
    let w = world(5);
    // Root ignores permissions: run the build as nobody on a world it may read and write.
    std::process::Command::new("chmod").args(["-R", "a+rwX"]).arg(&w.root).status().unwrap();
    let locked = w.input.join("mimiciv/hosp/diagnoses_icd.csv");
    std::process::Command::new("chmod").arg("000").arg(&locked).status().unwrap();
    let out = w.build_via(&["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
    assert!(!out.status.success());
    let err = cause(&out);
    assert!(err.contains("diagnoses_icd.csv") && err.contains("Permission denied"), "{err}");
    let s = w.summary();
    assert!(s["failed"]["hosp/diagnoses_icd"].is_string());
    assert!(s["tables"]["hosp/labevents"]["written"].as_u64().unwrap() > 0, "other tables still built");
}

#[test]
fn hitting_the_file_size_limit_fails_cleanly_and_the_next_build_succeeds() {
    let w = world(400);
    assert!(w.build().status.success());
    let before = tree(&w.output);
    // A new version of labevents: every patient's file must be rewritten.
    let path = w.input.join("mimiciv/hosp/labevents.csv");
    fs::write(&path, fs::read_to_string(&path).unwrap().replace("ROUTINE", "STAT")).unwrap();
    let out = w.build_via(&["prlimit", "--fsize=20000"]);
    assert!(!out.status.success(), "the limited build must fail");
    let err = cause(&out);
    assert!(err.contains("File too large"), "{err}");
    // The previous output is intact: every file as it was (none half-written, none lost).
    let during = tree(&w.output);
    for (k, v) in &during {
        if let Some(old) = before.get(k) {
            assert!(v == old || !k.to_string_lossy().contains("labevents"), "{} was half-rewritten", k.display());
        }
    }
    for k in before.keys() {
        assert!(during.contains_key(k), "{} lost", k.display());
    }
    let out = w.build();
    assert!(out.status.success(), "{}", stderr(&out));
    let clean = w.root.join("keep-clean");
    build(&w.input, &clean, &[]);
    assert_eq!(tree(&w.output), tree(&clean));
}

// ---- Round two: nothing deleted, nothing leaked, memory bounded (issue 13) ----

/// Every file under `dir` (relative path → bytes), the state folder left out.
fn published(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    output_files(dir, |p| fs::read(p).unwrap())
}

fn labevents_header(w: &World) -> (PathBuf, String, String) {
    let path = w.input.join("mimiciv/hosp/labevents.csv");
    let text = fs::read_to_string(&path).unwrap();
    let (header, body) = text.split_once('\n').unwrap();
    (path, header.to_string(), body.to_string())
}

#[test]
fn schema_drift_fails_the_table_and_never_deletes_or_publishes_every_patient() {
    let w = world(5);
    // A table no list knows, split per patient because it has subject_id: after that build
    // its manifest says it is per patient.
    let extra = w.input.join("mimiciv/hosp/notes_extra.csv");
    fs::write(&extra, format!("note_id,subject_id,text\n1,{},a\n2,99999999,b\n", w.subject(0))).unwrap();
    assert!(w.build().status.success());
    let before = published(&w.output);
    let (path, header, body) = labevents_header(&w);
    let cases = [
        ("renamed", header.replacen("subject_id", "subject", 1), "missing required column \"subject_id\""),
        ("duplicated", header.replacen("hadm_id", "subject_id", 1), "\"subject_id\" appears 2 times"),
        ("cut short", "labevent_id,subject_id,hadm_id".to_string(), "the header does not fit the data"),
    ];
    for (name, bad, expected) in cases {
        fs::write(&path, format!("{bad}\n{body}")).unwrap();
        let out = w.build();
        assert!(!out.status.success(), "{name}: the build must fail");
        let err = cause(&out);
        assert!(err.contains("labevents.csv") && err.contains(expected), "{name}: {err}");
        assert_eq!(published(&w.output), before, "{name}: the previous output changed");
        assert!(!w.output.join("spreadsheets/Hosp/labevents.csv").exists(), "{name}: whole table published");
        assert_balanced(&w.summary());
    }
    fs::write(&path, format!("{header}\n{body}")).unwrap();
    // The unknown table loses its key column: its manifest says it was per patient.
    fs::write(&extra, "note_id,subject,text\n1,1,a\n").unwrap();
    let out = w.build();
    assert!(!out.status.success());
    assert!(cause(&out).contains("notes_extra.csv"), "{}", cause(&out));
    assert!(!w.output.join("spreadsheets/Hosp/notes_extra.csv").exists());
    assert!(w.output.join(format!("patient_{}/Hosp/notes_extra.csv", w.subject(0))).exists());
    w.assert_nothing_outside();
}

#[test]
fn a_headerless_table_is_named_without_echoing_its_first_row() {
    let w = world(5);
    let (path, _, body) = labevents_header(&w);
    fs::write(&path, &body).unwrap();
    let out = w.build();
    assert!(!out.status.success());
    let err = cause(&out);
    assert!(err.contains("labevents.csv: line 1 does not look like a header: 16 fields"), "{err}");
    // No value of the row reaches the error, the log or summary.json.
    let first_row = body.lines().next().unwrap();
    let summary = fs::read_to_string(w.output.join("summary.json")).unwrap();
    for value in first_row.split(',').filter(|v| v.len() >= 4) {
        assert!(!stderr(&out).contains(value), "{value} leaked to stderr: {}", stderr(&out));
        assert!(!summary.contains(value), "{value} leaked to summary.json");
    }
    // An id that cannot be parsed is named by its kind and length, not its value.
    let rejects_reason = w.build_via(&["env"]);
    assert!(!String::from_utf8_lossy(&rejects_reason.stderr).contains(first_row));
}

#[test]
fn output_is_owner_and_group_only_whatever_the_umask() {
    let w = world(5);
    // Input files open to everyone, as downloads often are; copies must not keep that mode.
    std::process::Command::new("chmod").args(["-R", "a+rX"]).arg(&w.input).status().unwrap();
    let path = w.input.join("mimiciv/hosp/labevents.csv");
    let mut text = fs::read_to_string(&path).unwrap();
    text.push_str("1,2,too,few\n"); // a reject: its file holds a full row
    fs::write(&path, text).unwrap();
    let config = w.root.join("keep.toml");
    fs::write(&config, format!("input = {:?}\noutput = {:?}\nfiles = \"copy\"\n", w.input, w.output)).unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("umask 000; exec {} build --config {}", env!("CARGO_BIN_EXE_mimic-eye"), config.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    use std::os::unix::fs::PermissionsExt;
    let (mut files, mut dirs) = (0, 0);
    let mut stack = vec![w.output.clone()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap().flatten() {
            let mode = e.metadata().unwrap().permissions().mode() & 0o777;
            if e.file_type().unwrap().is_dir() {
                assert_eq!(mode, 0o750, "{}", e.path().display());
                stack.push(e.path());
                dirs += 1;
            } else {
                assert_eq!(mode, 0o640, "{}", e.path().display());
                files += 1;
            }
        }
    }
    assert!(files > 50 && dirs > 10, "{files} files, {dirs} folders checked");
    assert!(w.output.join(".mimic-eye/rejects/hosp/labevents.csv").exists());
    assert!(w.output.join("summary.json").exists());
}

#[test]
fn a_first_line_that_never_ends_fails_in_bounded_time_and_memory() {
    let w = world(5);
    let path = w.input.join("mimiciv/hosp/labevents.csv");
    type Case = (&'static str, Box<dyn Fn(&Path)>, &'static str);
    let cases: Vec<Case> = vec![
        ("no line feed", Box::new(|p| fs::write(p, vec![b'x'; 80 << 20]).unwrap()), "longer than"),
        ("only quotes", Box::new(|p| fs::write(p, vec![b'"'; 80 << 20]).unwrap()), "longer than"),
        ("sparse NUL file", Box::new(|p| fs::File::create(p).unwrap().set_len(4 << 30).unwrap()), "not a CSV file"),
    ];
    for (name, make, expected) in cases {
        make(&path);
        let started = std::time::Instant::now();
        let out = w.build();
        assert!(!out.status.success(), "{name}");
        assert!(cause(&out).contains(expected), "{name}: {}", cause(&out));
        let peak = w.summary()["peak_rss_bytes"].as_u64().unwrap();
        assert!(peak < 256 << 20, "{name}: peak RSS {peak}");
        println!("{name}: failed in {:?}, peak RSS {} MiB", started.elapsed(), peak >> 20);
    }
    // A gzip inflating to gigabytes without a line feed.
    fs::remove_file(&path).unwrap();
    let gz = w.input.join("mimiciv/hosp/labevents.csv.gz");
    let mut enc = flate2::write::GzEncoder::new(fs::File::create(&gz).unwrap(), flate2::Compression::fast());
    let block = vec![b'y'; 1 << 20];
    for _ in 0..1024 {
        enc.write_all(&block).unwrap();
    }
    enc.finish().unwrap();
    let out = w.build();
    assert!(cause(&out).contains("longer than"), "{}", cause(&out));
    assert!(w.summary()["peak_rss_bytes"].as_u64().unwrap() < 256 << 20);
}

#[test]
fn a_table_growing_while_it_is_read_is_not_published_in_part() {
    let w = world(2000);
    assert!(w.build().status.success());
    let before = published(&w.output);
    let path = w.input.join("mimiciv/hosp/labevents.csv");
    let s = w.subject(0);
    let line = format!("1,{s},2,3,50808,,2180-01-01 00:00:00,,1,1,mg,,,,ROUTINE,\n");
    // Append a row every millisecond for as long as the build runs, as `wget -c` does.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let appender = {
        let (stop, path, line) = (stop.clone(), path.clone(), line.clone());
        std::thread::spawn(move || {
            let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all(line.as_bytes()).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        })
    };
    let out = w.build();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    appender.join().unwrap();
    assert!(!out.status.success(), "a table read while it grew must fail");
    let err = w.summary()["failed"]["hosp/labevents"].as_str().unwrap().to_string();
    assert!(err.contains("labevents.csv") && err.contains("changed while it was being read"), "{err}");
    let after = published(&w.output);
    for (k, v) in &before {
        if k.to_string_lossy().contains("labevents") {
            assert_eq!(after.get(k), Some(v), "{} changed", k.display());
        }
    }
}

#[test]
fn overlapping_input_and_output_are_refused_before_anything_is_written() {
    let w = world(1);
    let run = |input: &Path, output: &Path| {
        bin().arg("build").arg("--input").arg(input).arg("--output").arg(output).output().unwrap()
    };
    let cases = [
        (w.input.clone(), w.input.clone(), "is the input directory"),
        (w.input.clone(), w.root.clone(), "is inside the output directory"),
        (w.input.clone(), w.input.join("mimic-cxr-jpg/files/out"), "inside the dataset folder"),
    ];
    for (input, output, expected) in cases {
        let out = run(&input, &output);
        assert!(!out.status.success(), "{}", output.display());
        assert!(cause(&out).contains(expected), "{}", cause(&out));
    }
    assert!(!w.input.join("mimic-cxr-jpg/files/out").exists());
    assert!(!w.input.join(".mimic-eye").exists() && !w.root.join(".mimic-eye").exists());
    // A missing input: no lock file, no output folder.
    let out = run(&w.root.join("nowhere"), &w.output);
    assert!(cause(&out).contains("does not exist"), "{}", cause(&out));
    assert!(!w.output.exists(), "the output was created for a build that could not start");
}

#[test]
fn config_ranges_paths_and_leftovers_are_checked() {
    let w = world(1);
    let config = w.root.join("keep.toml");
    fs::write(&config, format!("input = {:?}\noutput = {:?}\nwindow_days = 100000000\n", w.input, w.output)).unwrap();
    let out = bin().args(["build", "--config"]).arg(&config).output().unwrap();
    assert!(!out.status.success());
    assert!(cause(&out).contains("window_days = 100000000 is out of range"), "{}", cause(&out));
    assert!(!stderr(&out).contains("panicked"));
    // An output that cannot be created names its path.
    let blocker = w.root.join("keep-file");
    fs::write(&blocker, "a file, not a folder").unwrap();
    let out =
        bin().arg("build").arg("--input").arg(&w.input).arg("--output").arg(blocker.join("out")).output().unwrap();
    assert!(cause(&out).contains("keep-file/out"), "{}", cause(&out));
    // Temporary files a kill -9 left behind are cleaned at the next start.
    assert!(w.build().status.success());
    let orphans = [w.output.join(".tmpA1b2C3"), w.output.join(".mimic-eye/jobs/.tmpX9y8Z7")];
    for o in &orphans {
        fs::write(o, "{").unwrap();
    }
    assert!(w.build().status.success());
    for o in &orphans {
        assert!(!o.exists(), "{} left", o.display());
    }
    // A million-column header makes one short error line.
    let path = w.input.join("mimiciv/hosp/labevents.csv");
    fs::write(&path, format!("{}\n", vec!["c"; 1_000_000].join(","))).unwrap();
    let out = w.build();
    let last = stderr(&out).lines().last().unwrap_or("").len();
    assert!(last < 2_000, "error line of {last} bytes");
    assert!(w.summary()["failed"]["hosp/labevents"].as_str().unwrap().len() < 2_000);
}

#[test]
fn derived_table_rejects_carry_the_line_where_the_record_starts() {
    let w = world(1);
    let phase = w.input.join("reflacx/main_data/metadata_phase_1.csv");
    let text = fs::read_to_string(&phase).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    // A record (data row j) gets a quoted newline in its `Other` field; the next one gets a bad
    // subject_id, which the writer rejects. Rows without quotes, so a split on commas is exact.
    let j = (1..lines.len() - 1).find(|&j| !lines[j].contains('"') && !lines[j + 1].contains('"')).unwrap();
    let h: Vec<&str> = lines[0].split(',').collect();
    let (other, subject) =
        (h.iter().position(|c| *c == "Other").unwrap(), h.iter().position(|c| *c == "subject_id").unwrap());
    let mut first: Vec<String> = lines[j].split(',').map(str::to_string).collect();
    first[other] = "\"two\nlines\"".into();
    lines[j] = first.join(",");
    let mut second: Vec<String> = lines[j + 1].split(',').map(str::to_string).collect();
    second[subject] = "1x".into();
    lines[j + 1] = second.join(",");
    fs::write(&phase, lines.join("\r\n") + "\r\n").unwrap();
    // Data row j starts at line j + 1 and spans two lines; the rejected one starts at j + 3.
    assert!(w.build().status.success());
    let mut r = csv::Reader::from_path(w.output.join(".mimic-eye/rejects/reflacx/metadata.csv")).unwrap();
    let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0][1], (j + 3).to_string(), "the line where the rejected record starts");
    assert_eq!(rows[0][2], j.to_string(), "its row number in its phase file");
}

#[test]
fn a_linker_table_that_empties_fails_loudly_unless_the_shrink_is_accepted() {
    let w = world(5);
    assert!(w.build().status.success());
    let before = published(&w.output);
    let images = w.summary()["images"].as_u64().unwrap();
    assert!(images > 0);
    for table in ["mimic-cxr-jpg/mimic-cxr-2.0.0-metadata.csv", "mimic-iv-ed/ed/edstays.csv"] {
        let path = w.input.join(table);
        let full = fs::read_to_string(&path).unwrap();
        fs::write(&path, format!("{}\n", full.lines().next().unwrap())).unwrap(); // header only
        let out = w.build();
        assert!(!out.status.success(), "{table}: a header-only linker table must fail the build");
        let err = cause(&out);
        assert!(err.contains(table) && err.contains("--accept-shrink"), "{err}");
        assert_eq!(published(&w.output), before, "{table}: the previous output changed");
        fs::write(&path, full).unwrap();
    }
    // Deliberate: accepted once, then the smaller table is the new reference.
    let meta = w.input.join("mimic-cxr-jpg/mimic-cxr-2.0.0-metadata.csv");
    let full = fs::read_to_string(&meta).unwrap();
    fs::write(&meta, format!("{}\n", full.lines().next().unwrap())).unwrap();
    let mut cmd = bin();
    cmd.arg("build").arg("--input").arg(&w.input).arg("--output").arg(&w.output).arg("--accept-shrink");
    run_ok(&mut cmd);
    assert_eq!(w.summary()["images"], 0);
    assert!(w.build().status.success(), "the accepted size is the new reference");
}

#[test]
fn a_table_removed_from_the_input_loses_its_outputs_but_an_absent_module_folder_keeps_them() {
    let w = world(5);
    assert!(w.build().status.success());
    let patient = w.output.join(format!("patient_{}", w.subject(0)));
    assert!(patient.join("Hosp/transfers.csv").exists() && patient.join("ICU/icustays.csv").exists());
    fs::remove_file(w.input.join("mimiciv/hosp/transfers.csv")).unwrap();
    let out = w.build();
    assert!(out.status.success(), "{}", stderr(&out));
    let s = w.summary();
    assert_eq!(s["removed_tables"], serde_json::json!(["hosp/transfers"]));
    assert!(s["tables"].get("hosp/transfers").is_none());
    let left = published(&w.output);
    assert!(!left.keys().any(|k| k.ends_with("transfers.csv")), "a transfers file is left");
    // The ICU folder gone (an unmounted disk, a moved download): its outputs stay.
    fs::rename(w.input.join("mimiciv/icu"), w.root.join("keep-icu")).unwrap();
    let out = w.build();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(w.summary()["removed_tables"], serde_json::json!([]));
    assert!(patient.join("ICU/icustays.csv").exists(), "ICU outputs wiped with the folder missing");
    assert_eq!(published(&w.output), left);
}

#[test]
fn a_linker_table_of_malformed_rows_is_counted_without_being_held_in_memory() {
    let w = world(5);
    let meta = w.input.join("mimic-cxr-jpg/mimic-cxr-2.0.0-metadata.csv");
    let mut f = fs::OpenOptions::new().append(true).open(&meta).unwrap();
    for i in 0..5000 {
        writeln!(f, "broken,{i}").unwrap();
    }
    drop(f);
    let out = w.build();
    assert!(out.status.success(), "{}", stderr(&out));
    let s = w.summary();
    assert_balanced(&s);
    assert_eq!(s["tables"]["cxr_meta"]["rejected"], 5000);
    let kept = fs::read_to_string(w.output.join(".mimic-eye/rejects/cxr_meta.csv")).unwrap();
    assert_eq!(kept.lines().count(), 1 + 1000, "header and the first 1,000 malformed rows");
}

/// A copied study folder of the world's first cohort patient.
fn study_dir(w: &World) -> PathBuf {
    let sid = w.subject(0).to_string();
    let mut dirs: Vec<PathBuf> = fs::read_dir(w.input.join(format!("mimic-cxr-jpg/files/p{}/p{sid}", &sid[..2])))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs.remove(0)
}

fn copied(w: &World, study: &Path) -> PathBuf {
    w.output.join(format!("patient_{}/CXR-JPG/{}", w.subject(0), study.file_name().unwrap().to_string_lossy()))
}

#[test]
fn copies_follow_the_source_content_not_its_size_and_mtime() {
    let w = world(1);
    let config = w.root.join("keep.toml");
    fs::write(&config, format!("input = {:?}\noutput = {:?}\nfiles = \"copy\"\n", w.input, w.output)).unwrap();
    let build = |extra: &[&str]| {
        let mut cmd = bin();
        cmd.args(["build", "--config"]).arg(&config).args(extra);
        run_ok(&mut cmd);
    };
    build(&[]);
    let study = study_dir(&w);
    let jpg = fs::read_dir(&study)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "jpg"))
        .unwrap();
    let out = copied(&w, &study).join(jpg.file_name().unwrap());
    // Other bytes, same size, an older mtime: a re-download that kept the server's time.
    let mut bytes = fs::read(&jpg).unwrap();
    bytes.iter_mut().take(64).for_each(|b| *b ^= 0xff);
    fs::write(&jpg, &bytes).unwrap();
    let status = std::process::Command::new("touch").args(["-d", "2000-01-01"]).arg(&jpg).status().unwrap();
    assert!(status.success());
    build(&[]);
    assert_eq!(fs::read(&out).unwrap(), bytes, "the changed source was not copied again");
    // A copy changed behind the program's back is restored by --full.
    fs::write(&out, vec![0u8; bytes.len()]).unwrap();
    build(&["--full"]);
    assert_eq!(fs::read(&out).unwrap(), bytes, "--full did not recopy");
}

#[test]
fn a_long_file_name_or_a_link_loop_in_a_study_folder_is_skipped_and_the_rest_is_copied() {
    let w = world(1);
    let study = study_dir(&w);
    let long = format!("{}.jpg", "a".repeat(226)); // 230 bytes: legal, but not once flattened
    fs::write(study.join(&long), b"long-named image").unwrap();
    std::os::unix::fs::symlink(".", study.join("loop")).unwrap();
    let out = w.build();
    assert!(out.status.success(), "{}", stderr(&out));
    let s = w.summary();
    assert_balanced(&s);
    assert_eq!(fs::read(copied(&w, &study).join(&long)).unwrap(), b"long-named image");
    assert_eq!(s["tables"]["files/cxr-jpg"]["rejected"], 1, "the loop is counted once");
    assert!(stderr(&out).contains("a link back to a folder being copied"), "{}", stderr(&out));
    // Every image of every patient is there.
    assert_eq!(
        s["tables"]["files/cxr-jpg"]["written"].as_u64().unwrap(),
        w.summary()["images"].as_u64().unwrap() + 1,
        "the images and the long-named file"
    );
    w.assert_nothing_outside();
}

#[test]
fn table_links_inside_the_input_are_followed_and_odd_names_are_named() {
    let w = world(5);
    let hosp = w.input.join("mimiciv/hosp");
    // A table staged elsewhere in the input tree and linked in.
    fs::create_dir_all(w.input.join("staging")).unwrap();
    fs::rename(hosp.join("diagnoses_icd.csv"), w.input.join("staging/diagnoses_icd.csv")).unwrap();
    std::os::unix::fs::symlink("../../staging/diagnoses_icd.csv", hosp.join("diagnoses_icd.csv")).unwrap();
    // A link leaving the input tree, and names that cannot become output file names.
    fs::write(w.root.join("keep-outside.csv"), "subject_id,x\n1,2\n").unwrap();
    std::os::unix::fs::symlink(w.root.join("keep-outside.csv"), hosp.join("outside.csv")).unwrap();
    use std::os::unix::ffi::OsStrExt;
    let odd = [&b"lab events.csv"[..], b".hidden.csv", b"two\nlines.csv", b"caf\xe9.csv"];
    for name in odd {
        fs::write(hosp.join(std::ffi::OsStr::from_bytes(name)), "subject_id,x\n1,2\n").unwrap();
    }
    let out = w.build();
    // The link leaving the tree fails its table (named, never read), and only it.
    assert!(!out.status.success());
    assert!(cause(&out).contains("hosp/outside"), "{}", stderr(&out));
    let s = w.summary();
    assert!(s["tables"]["hosp/diagnoses_icd"]["written"].as_u64().unwrap() > 0, "the linked table was not read");
    assert!(s["tables"].get("hosp/outside").is_none());
    let failed = s["failed"]["hosp/outside"].as_str().unwrap();
    assert!(failed.contains("outside.csv") && failed.contains("leaving the input tree"), "{failed}");
    assert_eq!(s["failed"].as_object().unwrap().len(), 1, "{}", s["failed"]);
    let skipped: Vec<(String, String)> = s["skipped_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["path"].as_str().unwrap().to_string(), v["reason"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(skipped.len(), 4, "{skipped:?}");
    let find =
        |part: &str| skipped.iter().find(|(p, _)| p.contains(part)).unwrap_or_else(|| panic!("{part}: {skipped:?}"));
    assert!(find("lab events.csv").1.contains("name not usable"));
    assert!(find(".hidden.csv").1.contains("name not usable"));
    assert!(find("two\\nlines.csv").0.contains("\\n"), "the newline is escaped");
    assert!(find("caf\\xE9.csv").0.contains("\\xE9"), "the non-UTF-8 byte is escaped");
    let log = stderr(&out);
    assert!(log.contains("input file not read") && log.contains("lab events.csv"), "{log}");
    w.assert_nothing_outside();
}

#[test]
fn millions_of_distinct_short_eye_gaze_ids_cost_no_memory() {
    let w = world(1);
    let path = w.input.join("egd-cxr/eye_gaze.csv");
    let before_rows = fs::read_to_string(&path).unwrap().lines().count() - 1;
    let columns = fs::read_to_string(&path).unwrap().lines().next().unwrap().split(',').count();
    let dicom = fs::read_to_string(&path)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .split(',')
        .position(|c| c.eq_ignore_ascii_case("dicom_id"))
        .unwrap();
    let mut f = std::io::BufWriter::new(fs::OpenOptions::new().append(true).open(&path).unwrap());
    let n = 1_500_000u64;
    for i in 0..n {
        // Distinct cut-short ids that prefix no master-sheet id.
        let mut fields = vec![String::new(); columns];
        fields[dicom] = format!("{:08x}-{:04x}", 0xf000_0000u64 + i / 7, i % 7);
        writeln!(f, "{}", fields.join(",")).unwrap();
    }
    drop(f);
    let out = w.build();
    assert!(out.status.success(), "{}", stderr(&out));
    let s = w.summary();
    assert_balanced(&s);
    let t = &s["tables"]["egd-cxr/eye_gaze"];
    assert_eq!(t["read"].as_u64().unwrap(), before_rows as u64 + n);
    assert!(t["rejected"].as_u64().unwrap() >= n, "every hostile short id is rejected: {t}");
    let peak = s["peak_rss_bytes"].as_u64().unwrap();
    println!("peak RSS with {n} distinct short ids: {} MiB", peak >> 20);
    assert!(peak < 160 << 20, "peak RSS {} MiB", peak >> 20);
}
