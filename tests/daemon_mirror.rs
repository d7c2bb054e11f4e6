//! The daemon beside a PhysioNet-sized tree, driven through its real binary: it watches what a
//! build reads (not the mirror), idles, treats a download in progress as pending, repairs its
//! output and replaces its watcher on reload without leaking.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

fn world(bulk_patients: u64) -> World {
    let bulk = bulk_patients.to_string();
    World::synth(&["--patients", "12", "--others", "12", "--plain", "--cxr-bulk-patients", &bulk])
}

/// The inotify watches a process holds (the `inotify wd:` lines of its inotify descriptors),
/// and how many inotify instances it has.
fn inotify(pid: u32) -> (usize, usize) {
    let (mut watches, mut instances) = (0, 0);
    for fd in fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        if fs::read_link(fd.path()).is_ok_and(|l| l == Path::new("anon_inode:inotify")) {
            instances += 1;
            let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy())).unwrap();
            watches += info.lines().filter(|l| l.starts_with("inotify wd:")).count();
        }
    }
    (watches, instances)
}

fn status_kb(pid: u32, field: &str) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn watches_memory_and_idle_cpu_do_not_grow_with_the_mirror() {
    let mut figures = Vec::new();
    for bulk in [0u64, 7_200] {
        let w = world(bulk);
        let files = w.planted["bulk"]["files"].as_u64().unwrap();
        let d = w.daemon("");
        let pid = d.child.id();
        let (watches, instances) = inotify(pid);
        let events = |kind: &str| d.metric(&format!("mimic_eye_watch_events_total{{kind=\"{kind}\"}}")).unwrap_or(0.0);
        let (t0, events_before, rescans_before) = (cpu_ticks(pid), events("inotify"), events("rescan"));
        std::thread::sleep(Duration::from_secs(6)); // three rescans (rescan_seconds = 2)
        let idle_ticks = cpu_ticks(pid) - t0;
        // The folders a rescan lists are opened, which inotify reports: those reads are no
        // change, or a rescan of more folders than the event queue holds would overflow it and
        // call for the next rescan, without end.
        assert!(events("rescan") >= rescans_before + 2.0, "the periodic rescans ran");
        assert_eq!(events("inotify"), events_before, "the daemon's own reads came back as events");
        assert_eq!(events("overflow"), 0.0, "the event queue overflowed while idle");
        let rss = status_kb(pid, "VmRSS:");
        assert_eq!(instances, 1, "one inotify instance");
        assert_eq!(d.metric("mimic_eye_watches"), Some(watches as f64), "the gauge tells the watches");
        println!("bulk {files} files: {watches} watches, {rss} KiB RSS, {idle_ticks} CPU ticks in 6 s idle");
        figures.push((files, watches, rss, idle_ticks));
        let successes = d.metric("mimic_eye_builds_total{kind=\"full\",result=\"success\"}").unwrap_or(0.0)
            + d.metric("mimic_eye_builds_total{kind=\"incremental\",result=\"success\"}").unwrap_or(0.0);
        assert_eq!(successes, 1.0, "no second build after the first: {}", d.log_text());
        d.stop();
    }
    let (small, big) = (figures[0], figures[1]);
    assert!(big.0 >= 100_000, "the mirror-sized tree has {} files", big.0);
    assert_eq!(small.1, big.1, "watches grew with the mirror");
    assert!(big.1 < 1_000, "{} watches for a 12-patient cohort", big.1);
    assert!(big.2 < 64 << 10, "RSS {} KiB", big.2);
    assert!(big.2 < small.2 + (8 << 10), "RSS grew with the mirror: {} vs {} KiB", big.2, small.2);
    // Rescans walk the watched folders only: idle over three rescans stays near zero.
    assert!(big.3 <= 30, "{} CPU ticks idle", big.3);
}

#[test]
fn an_input_that_never_settles_is_pending_and_holds_back_nothing_else() {
    let w = world(0);
    let d = w.daemon("");
    // edstays is rewritten every 0.5 s, as a download in progress; meanwhile admissions gains
    // a row for a cohort patient.
    let edstays = w.input.join("mimic-iv-ed/ed/edstays.csv");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let toucher = {
        let (stop, edstays) = (stop.clone(), edstays.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut f = fs::OpenOptions::new().append(true).open(&edstays).unwrap();
                f.write_all(b"").unwrap();
                let now = std::time::SystemTime::now();
                f.set_modified(now).unwrap();
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    let admissions = w.input.join("mimiciv/hosp/admissions.csv");
    let sid = w.planted["cohort"][0].as_u64().unwrap();
    let text = fs::read_to_string(&admissions).unwrap();
    let columns = text.lines().next().unwrap().split(',').count();
    let mut row = vec![String::new(); columns];
    row[0] = sid.to_string();
    row[1] = "29999999".into();
    fs::write(&admissions, format!("{text}{}\n", row.join(","))).unwrap();
    let patient_file = w.output.join(format!("patient_{sid}/Hosp/admissions.csv"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !fs::read_to_string(&patient_file).unwrap().contains("29999999") {
        assert!(Instant::now() < deadline, "the admissions change was not applied in 20 s:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    let pending = d.metric("mimic_eye_inputs_pending").unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    toucher.join().unwrap();
    assert!(pending >= 1.0, "edstays was not pending");
    let failures: f64 = http_get(d.port, "/metrics")
        .unwrap()
        .1
        .lines()
        .filter(|l| l.starts_with("mimic_eye_builds_total") && l.contains("result=\"failure\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(failures, 0.0, "a download in progress counted as a failed build");
    assert!(summary(&w.output)["pending"].as_array().unwrap().iter().any(|p| p == "mimic-iv-ed/edstays"));
    d.stop();
}

#[test]
fn published_files_removed_or_changed_behind_its_back_come_back() {
    let w = world(0);
    let d = w.daemon("");
    let sid = w.planted["cohort"][1].as_u64().unwrap();
    let patient = w.output.join(format!("patient_{sid}"));
    let before = tree(&w.output);
    fs::remove_dir_all(&patient).unwrap();
    let labs = w.output.join(format!("patient_{}/Hosp/labevents.csv", w.planted["cohort"][0]));
    fs::write(&labs, "overwritten\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while tree(&w.output) != before {
        assert!(Instant::now() < deadline, "the output was not repaired in 20 s:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(300));
    }
    // The whole output folder gone: the daemon exits non-zero, for systemd to restart it.
    fs::remove_dir_all(&w.output).unwrap();
    let mut d = d;
    let status = d.wait_exit(Duration::from_secs(15));
    assert!(!status.success(), "exited 0 on a removed output");
    assert!(d.log_text().contains("the output folder"), "{}", d.log_text());
}

#[test]
fn reloads_replace_the_watcher_without_leaking() {
    let w = world(0);
    let d = w.daemon("");
    let pid = d.child.id();
    let threads = || status_kb(pid, "Threads:");
    let before = (inotify(pid), threads(), fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count());
    for i in 0..10 {
        let text = fs::read_to_string(&d.config).unwrap();
        let text: String =
            text.lines().filter(|l| !l.starts_with("settle_seconds")).map(|l| format!("{l}\n")).collect();
        fs::write(&d.config, format!("{text}settle_seconds = {}\n", 1 + i % 2)).unwrap();
        d.signal(libc::SIGHUP);
        std::thread::sleep(Duration::from_millis(400));
    }
    d.wait_idle(60);
    // The builds' blocking-pool threads stay up to 10 s after their last task (tokio's keep-alive),
    // and the rescans every 2 s keep a few busy when the machine is loaded: a leak per reload
    // would leave ten more, so up to four more are the pool's, not a leak.
    let deadline = Instant::now() + Duration::from_secs(30);
    while threads() > before.1 + 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    let after = (inotify(pid), threads(), fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count());
    assert_eq!(after.0 .1, 1, "inotify instances after 10 reloads");
    assert!(after.1 <= before.1 + 4, "threads {} -> {} (30 s after the last reload)", before.1, after.1);
    assert!(after.2 <= before.2 + 2, "descriptors {} -> {}", before.2, after.2);
    // A changed metrics_addr is refused aloud, not ignored.
    let text = fs::read_to_string(&d.config).unwrap();
    fs::write(&d.config, text.replace(&format!("127.0.0.1:{}", d.port), "127.0.0.1:1")).unwrap();
    d.signal(libc::SIGHUP);
    // A reload is taken between builds: a loaded machine's build may take a while.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !d.log_text().contains("metrics_addr cannot change while running") {
        assert!(Instant::now() < deadline, "{}", d.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(http_get(d.port, "/healthz").map(|r| r.0), Some(200));
    d.stop();
}

/// Starts the daemon in a user namespace whose inotify limit `limit` (a file of
/// `/proc/sys/user/`) is `value`: the kernel's per-user limits, lowered for this process only.
/// `None` (with the reason printed) where user namespaces are not available.
fn daemon_with_inotify_limit(w: &World, limit: &str, value: u32) -> Option<Daemon> {
    let set = format!("echo {value} > /proc/sys/user/{limit}");
    let probe = std::process::Command::new("unshare").args(["--user", "--map-root-user", "sh", "-c", &set]).output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: cannot lower {limit} in a user namespace here: {probe:?}");
        return None;
    }
    let port = free_port();
    let config = write_config(&w.root, &w.input, &w.output, port, "");
    let log = w.root.join(format!("daemon-{port}.log"));
    let file = fs::File::create(&log).unwrap();
    let child = std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "sh", "-c", &format!("{set} && exec \"$0\" run --config \"$1\"")])
        .arg(env!("CARGO_BIN_EXE_mimic-eye"))
        .arg(&config)
        .env("MIMIC_EYE_LOG", "info")
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let d = Daemon { child, port, config, log };
    d.wait_idle(120);
    Some(d)
}

/// Replaces an input file with new bytes (a new inode, as a download does), and waits until its
/// copy in the output has them.
fn replace_and_wait(d: &Daemon, input: &Path, output: &Path, bytes: &[u8], seconds: u64) {
    let tmp = input.with_extension("new");
    fs::write(&tmp, bytes).unwrap();
    fs::rename(&tmp, input).unwrap();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while fs::read(output).ok().as_deref() != Some(bytes) {
        assert!(Instant::now() < deadline, "{} not updated in {seconds} s:\n{}", output.display(), d.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An EyeGaze transcript file of the cohort: (input path, output path).
fn a_transcript(w: &World) -> (PathBuf, PathBuf) {
    let root = w.input.join("egd-cxr/audio_segmentation_transcripts");
    let dicom = fs::read_dir(&root).unwrap().flatten().map(|e| e.file_name()).max().unwrap();
    let input = root.join(&dicom).join("transcript.json");
    let pattern = format!("EyeGaze/audio_segmentation_transcripts/{}/transcript.json", dicom.to_string_lossy());
    let output = tree(&w.output).into_keys().find(|k| k.to_string_lossy().ends_with(&pattern)).unwrap();
    (input, w.output.join(output))
}

#[test]
fn at_the_inotify_watch_limit_rescans_cover_the_folders_left_unwatched() {
    let w = world(0);
    let Some(d) = daemon_with_inotify_limit(&w, "max_inotify_watches", 8) else { return };
    let log = d.log_text();
    assert!(log.contains("inotify watch limit reached"), "{log}");
    assert!(d.metric("mimic_eye_watch_errors_total").unwrap() >= 1.0);
    let watches = d.metric("mimic_eye_watches").unwrap();
    assert!((1.0..=8.0).contains(&watches), "{watches} watches under a limit of 8");
    assert!(inotify(d.child.id()).0 <= 8);
    // A copied folder past the limit (the last transcript folder): a rescan (every 2 s here)
    // finds the new file, and the build places it.
    let (input, output) = a_transcript(&w);
    replace_and_wait(&d, &input, &output, b"{\"replaced\": true}\n", 30);
    d.stop();
}

#[test]
fn without_inotify_the_daemon_rescans_and_does_not_spin() {
    let w = world(0);
    let Some(d) = daemon_with_inotify_limit(&w, "max_inotify_instances", 0) else { return };
    let log = d.log_text();
    assert!(log.contains("cannot start inotify; rescans only"), "{log}");
    assert!(d.metric("mimic_eye_watch_errors_total").unwrap() >= 1.0);
    assert_eq!(inotify(d.child.id()), (0, 0));
    // Idle: rescans every 2 s of a few dozen folders, no busy loop.
    let pid = d.child.id();
    let (t0, start) = (cpu_ticks(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(5));
    let share = (cpu_ticks(pid) - t0) as f64 / 100.0 / start.elapsed().as_secs_f64();
    assert!(share < 0.2, "the daemon used {:.0} % of a core idling without inotify", share * 100.0);
    let (input, output) = a_transcript(&w);
    replace_and_wait(&d, &input, &output, b"{\"replaced\": true}\n", 30);
    d.stop();
}
