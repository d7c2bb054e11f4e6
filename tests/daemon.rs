//! The daemon on a synth tree, driven through its real binary: incremental updates, slow
//! downloads, kill -9 at random points, SIGTERM.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

fn changed(
    before: &std::collections::BTreeMap<PathBuf, std::time::SystemTime>,
    after: &std::collections::BTreeMap<PathBuf, std::time::SystemTime>,
) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = after.iter().filter(|(k, t)| before.get(*k) != Some(t)).map(|(k, _)| k.clone()).collect();
    v.extend(before.keys().filter(|k| !after.contains_key(*k)).cloned());
    v
}

/// The metadata row of a new REFLACX reading of an image that is in MIMIC-CXR but not yet in the
/// cohort (synth gives every subject outside the cohort one such image).
fn new_reading_rows(input: &Path, planted: &serde_json::Value, n: usize) -> (String, Vec<String>) {
    let meta = read_table(&input.join("mimic-cxr-jpg/mimic-cxr-2.0.0-metadata.csv.gz"));
    let cohort: Vec<String> = planted["cohort"].as_array().unwrap().iter().map(|v| v.to_string()).collect();
    let mut rows = String::new();
    let mut subjects = Vec::new();
    for line in String::from_utf8(meta).unwrap().lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if cohort.contains(&f[1].to_string()) || subjects.contains(&f[1].to_string()) {
            continue;
        }
        let id = format!("P300R9{:05}", subjects.len());
        rows.push_str(&format!("{id},test,True,x,{},{},2544,3056,{}\r\n", f[0], f[1], vec!["0"; 16].join(",")));
        subjects.push(f[1].to_string());
        if subjects.len() == n {
            break;
        }
    }
    (rows, subjects)
}

#[test]
fn new_reflacx_patients_change_only_their_folders_and_the_affected_spreadsheets() {
    let s = World::synth(&["--patients", "12", "--others", "10"]);
    let port = free_port();
    let d = Daemon::start(&write_config(&s.root, &s.input, &s.output, port, ""), port);
    d.wait_idle(60);
    let before = mtimes(&s.output);
    let builds = d.builds();
    std::thread::sleep(Duration::from_millis(1100)); // mtime granularity

    // A REFLACX phase file gains readings of two images of subjects outside the cohort.
    let (rows, new_subjects) = new_reading_rows(&s.input, &s.planted, 2);
    let phase3 = s.input.join("reflacx/main_data/metadata_phase_3.csv");
    let mut f = fs::OpenOptions::new().append(true).open(&phase3).unwrap();
    f.write_all(rows.as_bytes()).unwrap();
    drop(f);
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.builds() <= builds && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    d.wait_idle(60);
    let after = mtimes(&s.output);
    let summary = summary(&s.output);
    assert_eq!(summary["patients"].as_u64().unwrap(), s.planted["patients"].as_u64().unwrap() + 2);
    assert_balanced(&summary);

    let changes = changed(&before, &after);
    for c in &changes {
        let top = c.components().next().unwrap().as_os_str().to_string_lossy().to_string();
        let new_patient = new_subjects.iter().any(|s| top == format!("patient_{s}"));
        let allowed_sheet = [
            "spreadsheets/REFLACX/metadata.csv",
            "spreadsheets/cxr_meta.csv",
            "spreadsheets/cxr_meta_with_stay_id_only.csv",
        ]
        .iter()
        .any(|a| c == Path::new(a));
        assert!(new_patient || allowed_sheet, "{} changed but is not affected", c.display());
    }
    for s in &new_subjects {
        assert!(
            after.contains_key(&PathBuf::from(format!("patient_{s}/Hosp/labevents.csv"))),
            "new patient {s} got no labevents"
        );
        assert!(after.contains_key(&PathBuf::from(format!("patient_{s}/REFLACX/metadata.csv"))));
    }
    assert!(changes.iter().any(|c| c == Path::new("spreadsheets/REFLACX/metadata.csv")));
    // The new patients' files equal those of a clean build of the same input.
    let clean = s.root.join("clean");
    build(&s.input, &clean, &[]);
    let (a, b) = (tree(&s.output), tree(&clean));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, v) in &a {
        assert!(v == &b[k], "{} differs from a clean build", k.display());
    }
    let (status, took) = d.stop();
    assert!(status.success() && took < Duration::from_secs(5));
}

#[test]
fn replacing_one_clinical_table_rewrites_only_its_changed_files() {
    let s = World::synth(&["--patients", "10", "--others", "5"]);
    let port = free_port();
    let d = Daemon::start(&write_config(&s.root, &s.input, &s.output, port, ""), port);
    d.wait_idle(60);
    let before = mtimes(&s.output);
    let builds = d.builds();
    std::thread::sleep(Duration::from_millis(1100));

    // A new version of diagnoses_icd: one cohort patient's rows change.
    let path = s.input.join("mimiciv/hosp/diagnoses_icd.csv.gz");
    let text = String::from_utf8(read_table(&path)).unwrap();
    let victim = s.planted["cohort"][3].to_string();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let i = lines.iter().position(|l| l.starts_with(&format!("{victim},"))).unwrap();
    lines[i] = lines[i].replace(",V707,", ",Z9981,").replace(",5723,", ",K766,");
    let tmp = s.root.join("diagnoses_icd.csv.gz");
    let mut enc = flate2::write::GzEncoder::new(fs::File::create(&tmp).unwrap(), flate2::Compression::default());
    enc.write_all((lines.join("\n") + "\n").as_bytes()).unwrap();
    enc.finish().unwrap();
    fs::rename(&tmp, &path).unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    while d.builds() <= builds && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    d.wait_idle(60);
    let changes = changed(&before, &mtimes(&s.output));
    assert_eq!(
        changes,
        vec![PathBuf::from(format!("patient_{victim}/Hosp/diagnoses_icd.csv"))],
        "only the changed patient's file"
    );
    let got = fs::read_to_string(s.output.join(format!("patient_{victim}/Hosp/diagnoses_icd.csv"))).unwrap();
    assert!(got.contains("Z9981") || got.contains("K766"));
    // The cohort's tables did not change: the link of the first build served this one.
    let log = d.log_text();
    assert!(log.contains("the last link is reused"), "{log}");
    d.stop();
}

#[test]
fn a_gzip_copied_in_slowly_is_never_read_half_written() {
    let s = World::synth(&["--patients", "8", "--others", "8", "--rows-per-patient", "400"]);
    let port = free_port();
    let d = Daemon::start(&write_config(&s.root, &s.input, &s.output, port, ""), port);
    d.wait_idle(60);

    // A new labevents arrives slowly, written in place like wget does; meanwhile other inputs
    // change, so builds run while it is incomplete.
    let path = s.input.join("mimiciv/hosp/labevents.csv.gz");
    let original = read_table(&path);
    let new_version: Vec<u8> = String::from_utf8(original).unwrap().replace("ROUTINE", "STAT").into_bytes();
    let mut gz = Vec::new();
    let mut enc = flate2::write::GzEncoder::new(&mut gz, flate2::Compression::default());
    enc.write_all(&new_version).unwrap();
    enc.finish().unwrap();
    let mut f = fs::File::create(&path).unwrap();
    let chunks: Vec<&[u8]> = gz.chunks(gz.len() / 8 + 1).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        f.write_all(chunk).unwrap();
        f.flush().unwrap();
        fs::write(s.input.join(format!("mimic-cxr/touch-{i}.txt")), b"x").unwrap();
        std::thread::sleep(Duration::from_millis(1600));
    }
    drop(f);
    d.wait_idle(60);
    let log = d.log_text();
    assert!(!log.contains("table failed"), "a build read the half-written file:\n{log}");
    assert!(
        log.contains("input still being written") || log.contains("gzip file ends before its end"),
        "no build ran during the copy:\n{log}"
    );
    let got = fs::read_to_string(
        s.output.join("spreadsheets/../").join(format!("patient_{}/Hosp/labevents.csv", s.planted["cohort"][0])),
    )
    .unwrap();
    assert!(got.contains("STAT") && !got.contains("ROUTINE"), "the complete new version was not picked up");
    d.stop();
}

/// The rows the daemon has read of labevents so far, failed reads included (0 before any).
fn labevents_rows_read(d: &Daemon) -> f64 {
    d.metric("mimic_eye_rows_read_total{table=\"hosp/labevents\"}").unwrap_or(0.0)
}

#[test]
fn a_stalled_gzip_download_waits_decoded_once_keeping_the_old_output_until_it_completes() {
    let s = World::synth(&["--patients", "8", "--others", "8", "--rows-per-patient", "400"]);
    let port = free_port();
    let d = Daemon::start(&write_config(&s.root, &s.input, &s.output, port, ""), port);
    d.wait_idle(60);
    let patient_file = s.output.join(format!("patient_{}/Hosp/labevents.csv", s.planted["cohort"][0]));
    let before = fs::read_to_string(&patient_file).unwrap();

    // A new labevents whose download stalls two thirds in, for longer than the settle period:
    // stable, so a build reads it, and cut short inside its gzip member.
    let path = s.input.join("mimiciv/hosp/labevents.csv.gz");
    let new_version = String::from_utf8(read_table(&path)).unwrap().replace("ROUTINE", "STAT");
    let mut gz = Vec::new();
    let mut enc = flate2::write::GzEncoder::new(&mut gz, flate2::Compression::default());
    enc.write_all(new_version.as_bytes()).unwrap();
    enc.finish().unwrap();
    let cut = gz.len() * 2 / 3;
    let read_before = labevents_rows_read(&d);
    fs::write(&path, &gz[..cut]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let held = |d: &Daemon| {
        d.log_text().contains("gzip file ends before its end")
            && d.metric("mimic_eye_inputs_pending") == Some(1.0)
            && d.metric("mimic_eye_build_running") == Some(0.0)
    };
    while !held(&d) {
        assert!(Instant::now() < deadline, "the cut-short file was never held as pending:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    let decoded_once = labevents_rows_read(&d) - read_before;
    let rows = new_version.lines().count() as f64 - 1.0;
    assert!(decoded_once > 0.0 && decoded_once < rows, "read {decoded_once} rows of a file cut short, of {rows}");
    let status = http_get(port, "/status").unwrap().1;
    assert!(status.contains("labevents.csv.gz"), "/status names the file it waits for: {status}");

    // Other inputs change meanwhile: their builds leave the held file alone (not decoded again).
    let builds = d.builds();
    fs::write(s.input.join("mimic-cxr/touch-0.txt"), b"x").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.builds() <= builds && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(d.builds() > builds, "no build ran for the other change:\n{}", d.log_text());
    assert_eq!(labevents_rows_read(&d) - read_before, decoded_once, "a held file was decoded again");
    assert_eq!(fs::read_to_string(&patient_file).unwrap(), before, "the previous output is kept meanwhile");

    // The download resumes and completes: the new version is built, nothing failed.
    fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(&gz[cut..]).unwrap();
    d.wait_idle(60);
    let log = d.log_text();
    assert!(log.contains("gzip file ends before its end"), "{log}");
    assert!(!log.contains("table failed"), "a stalled download was counted as a failure:\n{log}");
    let after = fs::read_to_string(&patient_file).unwrap();
    assert!(after.contains("STAT") && !after.contains("ROUTINE"), "the complete new version was not picked up");
    d.stop();
}

#[test]
fn kill_dash_nine_at_random_points_then_restart_equals_a_clean_build() {
    let s = World::synth(&["--patients", "40", "--others", "400", "--rows-per-patient", "1500"]);
    let clean = s.root.join("clean");
    let took = build(&s.input, &clean, &[])["duration_seconds"].as_f64().unwrap();
    let clean_tree = tree(&clean);
    let port = free_port();
    let config = write_config(&s.root, &s.input, &s.output, port, "");
    // Kill points spread over a build, from the duration of the clean one.
    let delays: Vec<u64> = [0.1, 0.3, 0.5, 0.7, 0.9, 0.2].iter().map(|f| 30 + (f * took * 1000.0) as u64).collect();
    let mut mid_build = 0;
    for (round, delay) in delays.iter().enumerate() {
        if round % 2 == 1 {
            // Force work: a different profile rewrites most outputs.
            fs::write(&config, fs::read_to_string(&config).unwrap().replace("profile = \"release\"\n", "")).unwrap();
        } else {
            fs::write(&config, format!("{}profile = \"release\"\n", fs::read_to_string(&config).unwrap())).unwrap();
        }
        let mut d = Daemon::start(&config, port);
        std::thread::sleep(Duration::from_millis(*delay));
        d.child.kill().unwrap(); // SIGKILL
        d.child.wait().unwrap();
        if !d.log_text().contains("build finished") {
            mid_build += 1;
        }
    }
    assert!(mid_build >= 3, "only {mid_build} kills landed during a build");
    fs::write(&config, fs::read_to_string(&config).unwrap().replace("profile = \"release\"\n", "")).unwrap();
    let d = Daemon::start(&config, port);
    d.wait_idle(120);
    d.stop();
    let got = tree(&s.output);
    assert_eq!(got.keys().collect::<Vec<_>>(), clean_tree.keys().collect::<Vec<_>>());
    for (k, v) in &got {
        assert!(v == &clean_tree[k], "{} differs from a clean build", k.display());
    }
    assert!(
        !s.output.join(".mimic-eye/staging").exists()
            || fs::read_dir(s.output.join(".mimic-eye/staging")).unwrap().next().is_none()
    );
}

#[test]
fn sigterm_during_a_build_stops_quickly_and_the_next_start_finishes() {
    let s = World::synth(&["--patients", "30", "--others", "300", "--rows-per-patient", "2000"]);
    let port = free_port();
    let config = write_config(&s.root, &s.input, &s.output, port, "");
    let d = Daemon::start(&config, port);
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.metric("mimic_eye_build_running") != Some(1.0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let (status, took) = d.stop();
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let d = Daemon::start(&config, port);
    d.wait_idle(120);
    d.stop();
    let clean = s.root.join("clean");
    build(&s.input, &clean, &[]);
    assert_eq!(tree(&s.output), tree(&clean));
    // A second daemon on the same output is refused while one runs.
    let d = Daemon::start(&config, port);
    d.wait_idle(60);
    let out = bin().args(["run", "--config"]).arg(&config).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("locked"), "{}", String::from_utf8_lossy(&out.stderr));
    d.stop();
}

#[test]
fn sighup_reloads_the_config() {
    let s = World::synth(&["--patients", "8", "--others", "4"]);
    let port = free_port();
    let config = write_config(&s.root, &s.input, &s.output, port, "");
    let d = Daemon::start(&config, port);
    d.wait_idle(60);
    assert_eq!(summary(&s.output)["profile"], "paper");
    let builds = d.builds();
    fs::write(&config, format!("{}profile = \"release\"\n", fs::read_to_string(&config).unwrap())).unwrap();
    d.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.builds() <= builds && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    d.wait_idle(60);
    let s2 = summary(&s.output);
    assert_eq!(s2["profile"], "release", "SIGHUP did not reload: {}", d.log_text());
    assert_eq!(s2["linked_images"], s.planted["linked_images_release"]);
    d.stop();
}

#[test]
fn idle_connections_are_capped_and_timed_out() {
    use std::io::Read;
    let s = World::synth(&["--patients", "4", "--others", "2"]);
    let port = free_port();
    let config = write_config(&s.root, &s.input, &s.output, port, "");
    let d = Daemon::start(&config, port);
    d.wait_idle(60);
    // 300 clients connect and say nothing.
    let mut idle: Vec<std::net::TcpStream> =
        (0..300).filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok()).collect();
    assert!(idle.len() >= 100, "{} connections", idle.len());
    std::thread::sleep(Duration::from_millis(200));
    // Those over the cap were closed at once: a read returns end of file, not a timeout.
    let mut closed_now = 0;
    for c in &mut idle {
        c.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        if matches!(c.read(&mut [0u8; 1]), Ok(0)) {
            closed_now += 1;
        }
    }
    println!("{closed_now} of {} idle connections closed at once", idle.len());
    assert!(closed_now >= idle.len() - 32, "only {closed_now} of {} closed at once", idle.len());
    // Within the request timeout every idle one is gone, and the endpoint answers again.
    std::thread::sleep(Duration::from_millis(2500));
    for c in &mut idle {
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let n = c.read(&mut [0u8; 16]);
        assert!(matches!(n, Ok(0)) || n.is_err(), "an idle connection is still open: {n:?}");
    }
    let (code, _) = http_get(port, "/healthz").expect("healthz answers");
    assert_eq!(code, 200);
    let open_fds = fs::read_dir(format!("/proc/{}/fd", d.child.id())).unwrap().count();
    assert!(open_fds < 100, "{open_fds} descriptors open after the idle clients left");
    d.stop();
}
