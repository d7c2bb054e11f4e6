//! Trust boundaries and silent loss: what comes from outside the program (links planted in the
//! output, edited state files, odd files where tables belong, damaged downloads) never makes a
//! build write, read or delete outside its trees, and never deletes outputs without evidence.
//! Each case drives the real binary.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::*;

struct World {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    input: PathBuf,
    output: PathBuf,
    planted: serde_json::Value,
}

fn world(args: &[&str]) -> World {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let input = root.join("in");
    let mut all = vec!["--patients", "6", "--others", "3", "--rows-per-patient", "4", "--plain"];
    all.extend_from_slice(args);
    let planted = synth(&input, &all);
    World { _tmp: tmp, output: root.join("out"), root, input, planted }
}

impl World {
    fn build_args(&self, args: &[&str]) -> Output {
        bin()
            .arg("build")
            .arg("--input")
            .arg(&self.input)
            .arg("--output")
            .arg(&self.output)
            .args(args)
            .output()
            .unwrap()
    }
    fn build(&self) -> Output {
        self.build_args(&[])
    }
    fn build_ok(&self) {
        let out = self.build();
        assert!(out.status.success(), "build failed: {}", stderr(&out));
    }
    fn subject(&self, i: usize) -> u64 {
        self.planted["cohort"][i].as_u64().unwrap()
    }
    fn patient(&self, i: usize) -> PathBuf {
        self.output.join(format!("patient_{}", self.subject(i)))
    }
    fn labevents(&self) -> PathBuf {
        self.input.join("mimiciv/hosp/labevents.csv")
    }
    /// Every per-patient labevents file of the output with its bytes.
    fn lab_outputs(&self) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
        tree(&self.output).into_iter().filter(|(p, _)| p.ends_with("Hosp/labevents.csv")).collect()
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// The files below `dir`, relative, with their bytes (a folder outside the output that must
/// not change).
fn files_below(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.insert(e.path().strip_prefix(dir).unwrap().to_path_buf(), fs::read(e.path()).unwrap_or_default());
            }
        }
    }
    out
}

#[test]
fn a_patient_folder_planted_as_a_link_is_never_written_or_deleted_through() {
    let w = world(&[]);
    w.build_ok();
    let patient = w.patient(0);
    // The folder replaced by a link to a folder outside, holding a copy of its files: neither a
    // rebuild that rewrites them nor one that deletes them may touch the copy.
    let away = w.root.join("away");
    fs::rename(&patient, &away).unwrap();
    fs::write(away.join("planted.txt"), "not mimic-eye's").unwrap();
    std::os::unix::fs::symlink(&away, &patient).unwrap();
    let before = files_below(&away);
    let out = w.build_args(&["--full"]);
    assert!(!out.status.success(), "a build through a linked patient folder succeeded");
    let err = stderr(&out);
    assert!(err.contains(&patient.display().to_string()) && err.contains("symbolic link"), "{err}");
    assert_eq!(files_below(&away), before, "files outside the output changed");
    // The patient leaves the cohort (a subjects file without them): their files would be
    // deleted, but not through the link.
    let subjects = w.root.join("subjects.txt");
    let others: Vec<String> = (1..4).map(|i| w.subject(i).to_string()).collect();
    fs::write(&subjects, others.join("\n")).unwrap();
    let cohort = format!("subjects:{}", subjects.display());
    let out = w.build_args(&["--cohort", &cohort, "--accept-shrink"]);
    assert!(!out.status.success(), "a build deleting through a linked folder succeeded");
    assert_eq!(files_below(&away), before, "files outside the output were deleted");
    // Removing the link is the repair: the next build makes the folder.
    fs::remove_file(&patient).unwrap();
    w.build_ok();
    assert!(patient.is_dir() && patient.join("Hosp/labevents.csv").is_file());
}

#[test]
fn state_folders_planted_as_links_are_refused_and_an_open_output_root_is_closed() {
    let w = world(&[]);
    // An output root made by someone else, open to every user (where anyone could plant links).
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(&w.output).unwrap();
    fs::set_permissions(&w.output, fs::Permissions::from_mode(0o777)).unwrap();
    let out = w.build();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fs::metadata(&w.output).unwrap().permissions().mode() & 0o777, 0o750);
    assert!(stderr(&out).contains("could be written by others"), "{}", stderr(&out));
    // The rejects folder as a link: refused before anything is written there.
    let away = w.root.join("away-rejects");
    fs::create_dir_all(&away).unwrap();
    let rejects = w.output.join(".mimic-eye/rejects");
    fs::remove_dir_all(&rejects).ok();
    std::os::unix::fs::symlink(&away, &rejects).unwrap();
    let mut text = fs::read_to_string(w.labevents()).unwrap();
    text.push_str("1,2,too,few\n");
    fs::write(w.labevents(), text).unwrap();
    let out = w.build();
    assert!(!out.status.success());
    assert!(stderr(&out).contains(".mimic-eye/rejects is a symbolic link"), "{}", stderr(&out));
    assert!(files_below(&away).is_empty(), "rejects written through a link");
    // spreadsheets/ as a link.
    fs::remove_file(&rejects).unwrap();
    let sheets = w.output.join("spreadsheets");
    fs::rename(&sheets, w.root.join("away-sheets")).unwrap();
    std::os::unix::fs::symlink(w.root.join("away-sheets"), &sheets).unwrap();
    let before = files_below(&w.root.join("away-sheets"));
    let out = w.build_args(&["--full"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("spreadsheets is a symbolic link"), "{}", stderr(&out));
    assert_eq!(files_below(&w.root.join("away-sheets")), before);
}

#[test]
fn paths_in_edited_state_files_never_leave_the_output() {
    let w = world(&[]);
    w.build_ok();
    let victims = [w.root.join("victim"), w.output.join("../victim-2")];
    for v in &victims {
        fs::write(v, "keep me").unwrap();
    }
    // A manifest edited to list files outside the output; the table then changes, so its
    // publish deletes what the old record listed and the new one does not.
    let manifest = w.output.join(".mimic-eye/jobs/hosp__labevents.json");
    let mut m: serde_json::Value = serde_json::from_slice(&fs::read(&manifest).unwrap()).unwrap();
    let files = m["files"].as_array_mut().unwrap();
    files.push(victims[0].display().to_string().into());
    files.push("../victim-2".into());
    fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
    let mut text = fs::read_to_string(w.labevents()).unwrap();
    let last = text.lines().last().unwrap().to_string();
    text.push_str(&last);
    text.push('\n');
    fs::write(w.labevents(), text).unwrap();
    let out = w.build();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("damaged state file"), "the damaged record was not said: {}", stderr(&out));
    for v in &victims {
        assert_eq!(fs::read_to_string(v).unwrap(), "keep me", "{} deleted", v.display());
    }
    // A crafted journal: an interrupted publish whose files lie outside, and one whose job key
    // names the state folder itself.
    let journal = w.output.join(".mimic-eye/journal");
    fs::create_dir_all(&journal).unwrap();
    let planted = w.root.join("planted-by-recovery");
    let entry = serde_json::json!({"job": "hosp/labevents", "files": [planted.display().to_string(), "../x"],
        "counts": {"read": 0, "written": 0, "outside_cohort": 0, "rejected": 0}});
    fs::write(journal.join("hosp__labevents.json"), entry.to_string()).unwrap();
    let entry = serde_json::json!({"job": "..", "files": [],
        "counts": {"read": 0, "written": 0, "outside_cohort": 0, "rejected": 0}});
    fs::write(journal.join("x.json"), entry.to_string()).unwrap();
    let out = w.build();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!planted.exists() && !w.root.join("x").exists(), "recovery wrote outside the output");
    assert!(w.output.join(".mimic-eye/jobs").is_dir(), "the state folder was removed");
    let verify = bin().arg("verify").arg("--output").arg(&w.output).output().unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
}

#[test]
fn a_folder_or_fifo_where_a_table_belongs_fails_it_and_keeps_its_outputs() {
    let w = world(&[]);
    w.build_ok();
    let labs = w.lab_outputs();
    assert!(labs.len() >= 6, "{} labevents files", labs.len());
    // A folder named like the table.
    fs::remove_file(w.labevents()).unwrap();
    fs::create_dir(w.labevents()).unwrap();
    let out = w.build();
    assert!(!out.status.success(), "a folder for a table passed");
    assert!(stderr(&out).contains("labevents.csv: a folder"), "{}", stderr(&out));
    assert_eq!(w.lab_outputs(), labs, "the table's outputs changed");
    assert_eq!(summary(&w.output)["removed_tables"], serde_json::json!([]));
    // A FIFO: the build must not hang on it.
    fs::remove_dir(w.labevents()).unwrap();
    let status = std::process::Command::new("mkfifo").arg(w.labevents()).status().unwrap();
    assert!(status.success());
    let mut build = bin();
    build.arg("build").arg("--input").arg(&w.input).arg("--output").arg(&w.output);
    let out = output_within(&mut build, Duration::from_secs(60));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("labevents.csv: not a regular file"), "{}", stderr(&out));
    assert_eq!(w.lab_outputs(), labs);
}

#[test]
fn a_table_in_two_forms_is_refused_naming_both_unless_the_config_says_which() {
    let w = world(&[]);
    w.build_ok();
    let labs = w.lab_outputs();
    // An interrupted `gunzip -k`: the .csv.gz whole, the .csv cut short.
    let text = fs::read(w.labevents()).unwrap();
    let gz = w.input.join("mimiciv/hosp/labevents.csv.gz");
    let mut enc = flate2::write::GzEncoder::new(fs::File::create(&gz).unwrap(), flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, &text).unwrap();
    enc.finish().unwrap();
    fs::write(w.labevents(), &text[..text.len() / 3]).unwrap();
    let out = w.build();
    assert!(!out.status.success(), "two forms of one table passed");
    let err = stderr(&out);
    assert!(err.contains("labevents.csv and") && err.contains("labevents.csv.gz"), "{err}");
    assert_eq!(w.lab_outputs(), labs);
    let config = w.root.join("gz.toml");
    fs::write(&config, format!("input = {:?}\noutput = {:?}\nboth_forms = \"gz\"\n", w.input, w.output)).unwrap();
    let out = bin().arg("build").arg("--config").arg(&config).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(w.lab_outputs(), labs, "the whole .csv.gz gives the same rows");
}

#[test]
fn a_table_that_loses_most_rows_is_held_back_until_accepted() {
    let w = world(&[]);
    w.build_ok();
    let labs = w.lab_outputs();
    let full = fs::read_to_string(w.labevents()).unwrap();
    let header = full.lines().next().unwrap().to_string();
    // A header-only re-download, then a file whose line ends are CRs (one line).
    for broken in [format!("{header}\n"), full.replace('\n', "\r")] {
        fs::write(w.labevents(), &broken).unwrap();
        let out = w.build();
        assert!(!out.status.success(), "a shrunk table was published");
        assert_eq!(w.lab_outputs(), labs, "outputs deleted");
    }
    let out = w.build();
    assert!(stderr(&out).contains("--accept-shrink") || stderr(&out).contains("labevents.csv"), "{}", stderr(&out));
    fs::write(w.labevents(), format!("{header}\n")).unwrap();
    let out = w.build();
    assert!(stderr(&out).contains("rows where the previous build had"), "{}", stderr(&out));
    let out = w.build_args(&["--accept-shrink"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(w.lab_outputs().is_empty(), "an accepted shrink is published");
}

#[test]
fn removal_needs_evidence_empty_module_folder_and_listed_tables_keep_outputs() {
    let w = world(&["--layout", "physionet"]);
    let files = w.input.join("physionet.org/files");
    let mimiciv = fs::read_dir(files.join("mimiciv")).unwrap().flatten().find(|e| e.path().is_dir()).unwrap().path();
    let input = files.clone();
    let build = |args: &[&str]| {
        bin().arg("build").arg("--input").arg(&input).arg("--output").arg(&w.output).args(args).output().unwrap()
    };
    let out = build(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let before = tree(&w.output);
    assert!(before.keys().any(|k| k.ends_with("ICU/icustays.csv")));
    // An empty icu/ (an unmounted disk's mount point): every ICU output stays.
    let icu = mimiciv.join("icu");
    fs::rename(&icu, w.root.join("keep-icu")).unwrap();
    fs::create_dir(&icu).unwrap();
    let out = build(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(summary(&w.output)["removed_tables"], serde_json::json!([]));
    assert!(stderr(&out).contains("is empty"), "{}", stderr(&out));
    assert_eq!(tree(&w.output), before);
    fs::remove_dir(&icu).unwrap();
    fs::rename(w.root.join("keep-icu"), &icu).unwrap();
    // A table gone but still listed in SHA256SUMS.txt is missing, not removed.
    let transfers = fs::read_dir(mimiciv.join("hosp"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("transfers.csv"));
    let transfers = transfers.expect("a transfers table");
    fs::remove_file(&transfers).unwrap();
    let out = build(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(summary(&w.output)["removed_tables"], serde_json::json!([]));
    assert!(stderr(&out).contains("missing, not removed"), "{}", stderr(&out));
    assert_eq!(tree(&w.output), before, "a listed table's outputs were removed");
}

#[test]
fn a_malformed_checksum_line_makes_its_table_unverifiable_not_the_dataset_unchecked() {
    let w = world(&["--layout", "physionet"]);
    let files = w.input.join("physionet.org/files");
    let mimiciv = fs::read_dir(files.join("mimiciv")).unwrap().flatten().find(|e| e.path().is_dir()).unwrap().path();
    let sums = mimiciv.join("SHA256SUMS.txt");
    let text = fs::read_to_string(&sums).unwrap();
    let damaged: Vec<String> = text
        .lines()
        .map(|l| if l.contains("hosp/labevents") { format!("{}  {}", &l[..40], &l[65..]) } else { l.to_string() })
        .collect();
    fs::write(&sums, damaged.join("\n") + "\n").unwrap();
    let out = bin().arg("build").arg("--input").arg(&files).arg("--output").arg(&w.output).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let s = summary(&w.output);
    let d = &s["datasets"]["mimiciv"];
    assert_eq!(d["sha256sums"], "unverifiable", "{d}");
    assert_eq!(d["sha256sums_malformed_lines"], 1, "{d}");
    let unverifiable = d["unverifiable"].as_array().unwrap();
    assert!(unverifiable.len() == 1 && unverifiable[0].as_str().unwrap().contains("labevents"), "{d}");
    // The other tables were still checked.
    assert!(d["checked"].as_u64().unwrap() >= 5, "{d}");
    assert!(stderr(&out).contains("read unverified"), "{}", stderr(&out));
}

#[test]
fn the_shrink_guard_follows_the_tables_not_the_spelling_of_the_input() {
    let w = world(&[]);
    let run_in = |input: &str| {
        bin()
            .current_dir(&w.root)
            .arg("build")
            .arg("--input")
            .arg(input)
            .arg("--output")
            .arg(&w.output)
            .output()
            .unwrap()
    };
    for input in ["in", "./in/", w.input.to_str().unwrap()] {
        let out = run_in(input);
        assert!(out.status.success(), "input given as {input}: {}", stderr(&out));
    }
    // The download moved to another folder: the same tables.
    fs::rename(&w.input, w.root.join("moved")).unwrap();
    let out = run_in("moved");
    assert!(out.status.success(), "moved input: {}", stderr(&out));
    fs::rename(w.root.join("moved"), &w.input).unwrap();
    // A damaged record fails safe: a collapsed cohort is still caught, then counts are fresh.
    let record = w.output.join(".mimic-eye/linker-rows.json");
    fs::write(&record, "{not json").unwrap();
    let meta = w.input.join("mimic-cxr-jpg/mimic-cxr-2.0.0-metadata.csv");
    let sheet = w.input.join("egd-cxr/master_sheet.csv");
    let phases: Vec<PathBuf> =
        (1..=3).map(|n| w.input.join(format!("reflacx/main_data/metadata_phase_{n}.csv"))).collect();
    let saved: Vec<(PathBuf, String)> =
        [&meta, &sheet].into_iter().chain(&phases).map(|p| (p.clone(), fs::read_to_string(p).unwrap())).collect();
    for (p, text) in &saved {
        fs::write(p, format!("{}\n", text.lines().next().unwrap())).unwrap();
    }
    let out = w.build();
    assert!(!out.status.success(), "a collapsed cohort passed with the record damaged");
    assert!(stderr(&out).contains("missing or damaged"), "{}", stderr(&out));
    for (p, text) in &saved {
        fs::write(p, text).unwrap();
    }
    fs::write(&record, "{not json").unwrap();
    let out = w.build();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("fresh counts recorded"), "{}", stderr(&out));
    let recorded: serde_json::Value = serde_json::from_slice(&fs::read(&record).unwrap()).unwrap();
    assert!(recorded["rows"]["mimic_cxr_jpg/mimic-cxr-2.0.0-metadata"].as_u64().unwrap() > 0, "{recorded}");
    // A shorter subjects file is a deliberate edit, named as such.
    let subjects = w.root.join("subjects.txt");
    let ids: Vec<String> = (0..6).map(|i| w.subject(i).to_string()).collect();
    fs::write(&subjects, ids.join("\n")).unwrap();
    let cohort = format!("subjects:{}", subjects.display());
    assert!(w.build_args(&["--cohort", &cohort]).status.success());
    fs::write(&subjects, ids[..1].join("\n")).unwrap();
    let out = w.build_args(&["--cohort", &cohort]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("cohort rule changed"), "{}", stderr(&out));
    assert_eq!(summary(&w.output)["patients"], 1);
}

#[test]
fn a_subjects_file_saved_by_a_spreadsheet_or_a_windows_editor_is_read_and_a_fifo_is_refused() {
    let w = world(&[]);
    let subjects = w.root.join("subjects.csv");
    let text = format!("\u{feff}subject_id\r\n{}\r\n{}\r\n", w.subject(0), w.subject(1));
    fs::write(&subjects, text).unwrap();
    let cohort = format!("subjects:{}", subjects.display());
    let out = w.build_args(&["--cohort", &cohort]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(summary(&w.output)["patients"], 2);
    let fifo = w.root.join("subjects.fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let cohort = format!("subjects:{}", fifo.display());
    let mut build = bin();
    build.arg("build").arg("--input").arg(&w.input).arg("--output").arg(&w.output).args(["--cohort", &cohort]);
    let out = output_within(&mut build, Duration::from_secs(60));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not a regular file"), "{}", stderr(&out));
    // The same for a config named on the command line.
    let out = bin().arg("build").arg("--config").arg(&fifo).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not a regular file"), "{}", stderr(&out));
}

#[test]
fn a_daemon_whose_lock_file_is_removed_stops_non_zero() {
    let w = world(&[]);
    let port = free_port();
    let config = write_config(&w.root, &w.input, &w.output, port, "");
    let mut daemon = Daemon::start(&config, port);
    daemon.wait_idle(120);
    // Removed and made again, as a one-shot build beside it would: same name, another file.
    let lock = w.output.join(".mimic-eye/lock");
    fs::remove_file(&lock).unwrap();
    fs::write(&lock, "").unwrap();
    let status = daemon.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "the daemon stopped with success");
    assert!(
        daemon.log_text().contains("lock file") && daemon.log_text().contains("was replaced"),
        "{}",
        daemon.log_text()
    );
    // A one-shot build beside a running daemon is refused, naming the holder.
    let mut daemon = Daemon::start(&config, port);
    daemon.wait_idle(120);
    // One local client holding every connection slot, idle: the health check still answers.
    let idle: Vec<std::net::TcpStream> =
        (0..64).filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok()).collect();
    assert!(idle.len() >= 32, "{} idle connections", idle.len());
    let health = http_get(port, "/healthz");
    assert_eq!(health.map(|(code, _)| code), Some(200), "the health check starved by idle connections");
    drop(idle);
    let out = bin().arg("build").arg("--config").arg(&config).output().unwrap();
    assert!(!out.status.success());
    let pid = daemon.child.id().to_string();
    assert!(stderr(&out).contains(&format!("PID {pid}")), "{}", stderr(&out));
    let _ = daemon.child.kill();
}

#[test]
fn listings_never_open_a_path_outside_the_tree_they_check() {
    let w = world(&["--layout", "physionet"]);
    let files = w.input.join("physionet.org/files");
    let mimiciv = fs::read_dir(files.join("mimiciv")).unwrap().flatten().find(|e| e.path().is_dir()).unwrap().path();
    // Lines naming files outside the dataset folder, with their true digests: were they
    // opened, they would pass.
    let victim = w.root.join("victim.txt");
    fs::write(&victim, "outside").unwrap();
    let digest = mimic_eye::hex(&sha256(b"outside"));
    let mut sums = fs::read_to_string(mimiciv.join("SHA256SUMS.txt")).unwrap();
    sums.push_str(&format!("{digest} {}\n{digest} ../../../../victim.txt\nnot a line\n", victim.display()));
    fs::write(mimiciv.join("SHA256SUMS.txt"), sums).unwrap();
    let out = bin().args(["inputs", "--json", "--verify", "--input"]).arg(&files).output().unwrap();
    assert!(!out.status.success(), "outside paths passed the check");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = report["datasets"].as_array().unwrap().iter().find(|d| d["key"] == "mimiciv").unwrap().clone();
    let v = &d["verified"];
    assert_eq!(v["outside"]["count"], 2, "{v}");
    assert_eq!(v["malformed"]["count"], 1, "{v}");
    assert!(v["ok"].as_u64().unwrap() > 5, "the other lines were still checked: {v}");
    // The build passes over those lines (said), and `verify` of an output holds the same rule.
    let out = bin().arg("build").arg("--input").arg(&files).arg("--output").arg(&w.output).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let own = w.output.join("SHA256SUMS.txt");
    let mut listing = fs::read_to_string(&own).unwrap();
    listing.push_str(&format!("{digest} {}\n", victim.display()));
    fs::write(&own, listing).unwrap();
    let out = bin().arg("verify").arg("--output").arg(&w.output).output().unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("listed outside the tree"), "{text}");
}

#[test]
fn a_record_of_quotes_that_never_ends_fails_its_table_naming_the_line() {
    let w = world(&[]);
    w.build_ok();
    let labs = w.lab_outputs();
    // Past the 64 MiB record limit: a quote opened on line 2 and never closed. Scanning it
    // again from its start at every chunk made this quadratic (31 s of CPU for 100 KB of
    // gzipped quotes); the figure is in the closing note, measured on the release binary.
    let header = fs::read_to_string(w.labevents()).unwrap().lines().next().unwrap().to_string();
    let mut body = format!("{header}\n").into_bytes();
    body.resize(body.len() + (66 << 20), b'"');
    fs::write(w.labevents(), body).unwrap();
    let started = Instant::now();
    let out = w.build();
    println!("a 66 MiB record of quotes failed in {:.1} s", started.elapsed().as_secs_f64());
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("labevents.csv") && err.contains("starting at line 2 is longer than"), "{err}");
    assert_eq!(w.lab_outputs(), labs);
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}
