//! What an operator meets first: `--version`, `--log-level`, `validate`, completions and the
//! man page, the start-up line, and the daemon's build_info, process metrics, `/status`
//! details, pending-input age, rejects gauge and reload results. Driven through the binary.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::*;

fn text(out: &std::process::Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn version_names_the_commit_and_the_gzip_backend() {
    let out = run_ok(bin().arg("--version"));
    let (stdout, _) = text(&out);
    assert!(stdout.starts_with(&format!("mimic-eye {} (commit ", env!("CARGO_PKG_VERSION"))), "{stdout}");
    let backend = if cfg!(feature = "isal") { "gzip isal" } else { "gzip zlib-rs" };
    assert!(stdout.contains(backend), "{stdout}");
    // In a git checkout (as CI's is) the commit is HEAD's.
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    if let Some(head) = head.ok().filter(|h| h.status.success()) {
        let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
        assert!(stdout.contains(&format!("commit {head}")), "{stdout} is not built from {head}");
    }
}

#[test]
fn a_log_level_that_does_not_parse_is_an_error_not_the_default() {
    let tmp = tempfile::tempdir().unwrap();
    let out =
        bin().env("MIMIC_EYE_LOG", "mimic_eye=loud").args(["inputs", "--input"]).arg(tmp.path()).output().unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("MIMIC_EYE_LOG=\"mimic_eye=loud\" is not a log filter"), "{stderr}");
    let out = bin().args(["--log-level", "loud", "inputs", "--input"]).arg(tmp.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("possible values: error, warn, info, debug, trace"), "{}", text(&out).1);
    // The flag wins over the variable, and its level is the one that logs: the WARN of a
    // missing dataset is there at warn and gone at error.
    let input = tmp.path().join("in");
    synth(&input, &["--patients", "2", "--others", "1"]);
    fs::remove_dir_all(input.join("mimic-iv-ed")).unwrap();
    let build = |level: &str, out: &str| {
        let mut c = bin();
        c.env("MIMIC_EYE_LOG", "mimic_eye=loud").args(["--log-level", level, "build", "--input"]).arg(&input);
        c.arg("--output").arg(tmp.path().join(out)).output().unwrap()
    };
    let (warned, quiet) = (build("warn", "a"), build("error", "b"));
    assert!(warned.status.success() && quiet.status.success(), "{}", text(&quiet).1);
    assert!(text(&warned).1.contains("WARN") && text(&warned).1.contains("dataset missing"), "{}", text(&warned).1);
    assert!(!text(&quiet).1.contains("WARN"), "{}", text(&quiet).1);
}

#[test]
fn validate_says_whether_run_would_start_and_names_each_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    synth(&input, &["--patients", "3", "--others", "1"]);
    let output = tmp.path().join("out");
    let config = write_config(tmp.path(), &input, &output, 9898, "");
    let out = run_ok(bin().args(["validate", "--config"]).arg(&config));
    let (stdout, _) = text(&out);
    assert!(stdout.contains(&format!("config   {}: parses and resolves", config.display())), "{stdout}");
    assert!(stdout.contains(&format!("output   {}: to be made in", output.display())), "{stdout}");
    assert!(stdout.contains("metrics  127.0.0.1:9898 (loopback)"), "{stdout}");
    assert!(stdout.contains("valid: `mimic-eye run` would start"), "{stdout}");
    assert!(!output.exists(), "validate wrote the output");

    // An output that is a link, and a missing dataset: both named, exit 1.
    let elsewhere = tmp.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &output).unwrap();
    fs::rename(input.join("mimic-cxr-jpg"), tmp.path().join("jpg-aside")).unwrap();
    let out = bin().args(["validate", "--config"]).arg(&config).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("2 problem(s)"), "{stderr}");
    assert!(stdout.contains(&format!("problem: output {} is a symbolic link", output.display())), "{stdout}");
    assert!(stdout.contains("problem: a dataset the build needs is missing"), "{stdout}");

    // A config that does not parse is named with its cause.
    fs::write(&config, "input = 3\n").unwrap();
    let out = bin().args(["validate", "--config"]).arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains(&format!("parsing config {}", config.display())), "{}", text(&out).1);
}

#[test]
fn completions_and_the_man_page_cover_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let (stdout, _) = text(&run_ok(bin().args(["completions", shell])));
        for command in ["build", "run", "fetch", "validate", "inputs", "verify"] {
            assert!(stdout.contains(command), "{shell} completions lack {command}");
        }
    }
    let (man, _) = text(&run_ok(bin().arg("man")));
    assert!(man.starts_with(".ie") || man.contains(".TH mimic-eye"), "{}", &man[..man.len().min(200)]);
    for command in ["build", "run", "fetch", "validate", "completions"] {
        assert!(man.contains(command), "the man page lacks {command}");
    }
}

/// The `name{labels} value` lines of a metric.
fn lines<'a>(body: &'a str, name: &str) -> Vec<&'a str> {
    body.lines().filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' '])).collect()
}

#[test]
fn the_daemon_says_who_it_is_what_waits_and_what_its_output_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, output) = (tmp.path().join("in"), tmp.path().join("out"));
    synth(&input, &["--patients", "4", "--others", "2"]);
    let port = free_port();
    // A host name, as people write it.
    let config = write_config(tmp.path(), &input, &output, port, "");
    let named = fs::read_to_string(&config).unwrap().replace("127.0.0.1:", "localhost:");
    fs::write(&config, named).unwrap();
    let d = Daemon::start(&config, port);
    d.wait_idle(60);
    let log = d.log_text();
    let start = log.lines().find(|l| l.contains("mimic-eye starting")).unwrap_or_else(|| panic!("{log}"));
    for part in [env!("CARGO_PKG_VERSION"), "commit ", &config.display().to_string(), &format!("listen={}", port)] {
        assert!(start.contains(part) || start.contains(&format!(":{port}")), "{part} not in {start}");
    }

    let (_, body) = http_get(port, "/metrics").unwrap();
    let info = lines(&body, "mimic_eye_build_info");
    assert_eq!(info.len(), 1, "{body}");
    assert!(info[0].contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))) && info[0].ends_with(" 1"));
    assert!(info[0].contains("backend=\"") && info[0].contains("commit=\""), "{}", info[0]);
    for name in ["process_open_fds", "process_max_fds", "process_start_time_seconds", "process_resident_memory_bytes"] {
        let v: f64 = lines(&body, name).first().and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0.0);
        assert!(v > 0.0, "{name} is {v}");
    }
    // Rejects in the output as it stands, table by table, as summary.json counts them.
    let sum = summary(&output);
    for (table, counts) in sum["tables"].as_object().unwrap() {
        let rejected = counts["rejected"].as_u64().unwrap();
        let line = format!("mimic_eye_output_rejected_rows{{table=\"{table}\"}} {rejected}");
        assert!(body.contains(&line), "{line} not in the metrics");
    }

    // A download cut short stays pending: /status and the age gauge say so, and it grows.
    let lab = input.join("mimiciv/hosp/labevents.csv.gz");
    let bytes = fs::read(&lab).unwrap();
    fs::write(&lab, &bytes[..bytes.len() / 2]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut status = serde_json::Value::Null;
    while Instant::now() < deadline {
        status = serde_json::from_str(&http_get(port, "/status").unwrap().1).unwrap();
        if status["pending_inputs"]["oldest_seconds"].as_u64() >= Some(3) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(status["pending_inputs"]["count"], 1, "{status}");
    assert_eq!(status["pending_inputs"]["first"][0], lab.display().to_string());
    assert!(status["pending_inputs"]["oldest_seconds"].as_u64() >= Some(3), "{status}");
    assert!(d.metric("mimic_eye_inputs_pending_oldest_seconds").unwrap_or(0.0) >= 3.0);
    assert!(status["version"].as_str().unwrap().starts_with(env!("CARGO_PKG_VERSION")), "{status}");
    assert!(status["uptime_seconds"].as_u64() >= Some(3), "{status}");
    assert!(status["failed_tables"].as_object().is_some_and(|f| f.is_empty()), "{status}");
    fs::write(&lab, &bytes).unwrap();

    // A reload says what changed and counts its result.
    let text = fs::read_to_string(&config).unwrap();
    fs::write(&config, format!("{text}window_days = 2\n")).unwrap();
    d.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d.log_text().contains("configuration reloaded") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let reloaded = d.log_text().lines().find(|l| l.contains("configuration reloaded")).unwrap_or_default().to_string();
    assert!(reloaded.contains("changed=window_days"), "{reloaded}");
    fs::write(&config, "output = 3\n").unwrap();
    d.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(20);
    while d.metric("mimic_eye_config_reloads_total{result=\"failed\"}").unwrap_or(0.0) < 1.0 {
        assert!(Instant::now() < deadline, "no failed reload counted:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(d.metric("mimic_eye_config_reloads_total{result=\"applied\"}"), Some(1.0));
    d.stop();
}

#[test]
fn a_build_closes_with_what_it_did_and_what_was_missing_and_says_when_nothing_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, output) = (tmp.path().join("in"), tmp.path().join("out"));
    synth(&input, &["--patients", "3", "--others", "1"]);
    fs::remove_dir_all(input.join("mimic-iv-ed")).unwrap();
    let first = run_ok(bin().args(["build", "--input"]).arg(&input).arg("--output").arg(&output));
    let (first, _) = text(&first);
    let sum = summary(&output);
    let jobs = sum["table_jobs"].as_u64().unwrap();
    assert!(jobs > 10, "{sum}");
    assert!(first.contains(&format!("tables: {jobs} read, 0 unchanged")), "{first}");
    let rejected: u64 = sum["tables"].as_object().unwrap().values().map(|c| c["rejected"].as_u64().unwrap()).sum();
    assert!(rejected > 0 && first.contains(&format!("{rejected} rejected (this build: ")), "{first}");
    for (reason, n) in sum["rejects_by_reason"].as_object().unwrap() {
        assert!(first.contains(&format!("{reason} {n}")), "{reason} {n} not in {first}");
    }
    assert!(first.contains("missing: mimic-iv-ed: stays and linked images are 0 without it"), "{first}");
    assert!(first.contains("warnings: "), "{first}");
    assert!(!first.contains("nothing changed"), "{first}");
    let again = run_ok(bin().args(["build", "--input"]).arg(&input).arg("--output").arg(&output));
    let (again, _) = text(&again);
    assert!(again.contains(&format!("tables: 0 read, {jobs} unchanged")), "{again}");
    assert!(again.contains("nothing changed: the output is as the last build left it"), "{again}");
}

#[test]
fn an_input_that_is_one_dataset_is_named_as_such() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    synth(&input, &["--patients", "2", "--others", "1"]);
    let mut build = bin();
    build.args(["build", "--input"]).arg(input.join("mimiciv")).arg("--output").arg(tmp.path().join("o"));
    let out = build.output().unwrap();
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    let hint = format!(
        "{} looks like the MIMIC-IV folder itself: --input takes the folder holding the datasets (here {})",
        input.join("mimiciv").display(),
        input.display()
    );
    assert!(stderr.contains(&hint), "{stderr}");
    let (stdout, _) = text(&bin().args(["inputs", "--input"]).arg(input.join("mimiciv")).output().unwrap());
    assert!(stdout.contains(&hint), "{stdout}");
}

#[test]
fn ctrl_c_stops_a_build_saying_what_was_kept_and_the_same_command_finishes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, output) = (tmp.path().join("in"), tmp.path().join("out"));
    // Large enough that the stop comes mid-build (a million chartevents rows).
    synth(&input, &["--patients", "20", "--others", "20", "--chart-rows-per-patient", "25000"]);
    let mut child = bin()
        .args(["build", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once a first table is published, the build is under way.
    let jobs = output.join(".mimic-eye/jobs");
    let deadline = Instant::now() + Duration::from_secs(60);
    while fs::read_dir(&jobs).map_or(0, |d| d.count()) == 0 {
        assert!(Instant::now() < deadline && child.try_wait().unwrap().is_none(), "the build ended before the stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("stopped by a signal: "), "{stderr}");
    assert!(stderr.contains("table(s) finished and published before the stop are kept"), "{stderr}");
    assert!(
        !fs::read_dir(output.join(".mimic-eye"))
            .unwrap()
            .flatten()
            .any(|e| e.file_name() == "journal" && fs::read_dir(e.path()).unwrap().count() > 0),
        "a publish was left half done"
    );
    let finished = run_ok(bin().args(["build", "--input"]).arg(&input).arg("--output").arg(&output));
    let clean = tmp.path().join("clean");
    run_ok(bin().args(["build", "--input"]).arg(&input).arg("--output").arg(&clean));
    assert_eq!(tree(&output), tree(&clean), "{}", text(&finished).0);
}

/// A world whose build takes a second or two: a million chartevents rows.
fn slow_world(root: &std::path::Path) -> std::path::PathBuf {
    let input = root.join("in");
    synth(&input, &["--patients", "20", "--others", "20", "--chart-rows-per-patient", "25000"]);
    input
}

#[test]
fn off_a_terminal_a_build_prints_a_progress_line_every_few_seconds() {
    let tmp = tempfile::tempdir().unwrap();
    let input = slow_world(tmp.path());
    let mut build = bin();
    build.env("MIMIC_EYE_PROGRESS_SECONDS", "0.05").args(["build", "--input"]).arg(&input);
    let out = run_ok(build.arg("--output").arg(tmp.path().join("out")));
    let (_, stderr) = text(&out);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("progress: ")).collect();
    assert!(lines.len() >= 2, "{stderr}");
    let total = summary(&tmp.path().join("out"))["table_jobs"].as_u64().unwrap();
    for line in &lines {
        assert!(line.contains(" tables, ") && line.contains("MB/s, ETA "), "{line}");
        assert!(line.contains(&format!("/{total} tables")), "{line}");
    }
}

#[test]
#[ignore = "needs script (util-linux) for a terminal: apt-get install bsdutils"]
fn on_a_terminal_one_overall_bar_and_bars_for_tables_in_flight_and_logs_never_tear_them() {
    let tmp = tempfile::tempdir().unwrap();
    let input = slow_world(tmp.path());
    let command = format!(
        "{} build --input {} --output {}",
        env!("CARGO_BIN_EXE_mimic-eye"),
        input.display(),
        tmp.path().join("out").display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("MIMIC_EYE_LOG", "warn")
        .env("TERM", "xterm")
        .output()
        .unwrap();
    assert!(out.status.success());
    let screen = String::from_utf8_lossy(&out.stdout);
    let total = summary(&tmp.path().join("out"))["table_jobs"].as_u64().unwrap();
    assert!(screen.contains("build ["), "no overall bar");
    assert!(screen.contains(&format!("{total}/{total} tables")), "the bar did not end at every table");
    assert!(screen.contains("icu/chartevents ["), "no bar for the table in flight");
    // Each log line starts on a line of its own, never after a bar's text.
    let warnings: Vec<&str> = screen.split(['\r', '\n']).filter(|l| l.contains("WARN")).collect();
    assert!(!warnings.is_empty(), "the world logs a warning");
    for line in warnings {
        assert!(!line.contains(" tables, ") && !line.contains("] "), "a log line tore a bar: {line:?}");
    }
}

#[test]
fn the_readmes_demo_sample_is_what_demo_prints() {
    let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let after = readme.split_once("builds it and prints\n\n```\n").expect("the README's demo sample").1;
    let sample = after.split_once("```").unwrap().0;
    let (printed, _) = text(&run_ok(bin().arg("demo")));
    assert_eq!(printed, sample, "the README's demo sample differs from what `demo` prints");
}

#[test]
fn a_long_verify_prints_its_progress_off_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let input = slow_world(tmp.path());
    let output = tmp.path().join("out");
    run_ok(bin().args(["build", "--input"]).arg(&input).arg("--output").arg(&output));
    let listed = fs::read_to_string(output.join("SHA256SUMS.txt")).unwrap().lines().count();
    let out = run_ok(bin().env("MIMIC_EYE_PROGRESS_SECONDS", "0.001").args(["verify", "--output"]).arg(&output));
    let (_, stderr) = text(&out);
    let shown = format!("verify {}/out: ", tmp.path().file_name().unwrap().to_string_lossy());
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with(&shown)).collect();
    assert!(!lines.is_empty(), "{stderr}");
    for line in lines {
        assert!(line.contains(&format!("/{listed} files, ")) && line.contains("MB/s, ETA "), "{line}");
    }
}
