//! Observability and deployment with the real tools: Prometheus scraping the daemon, promtool
//! checking the metrics and the alert rules, systemd-analyze checking the unit.
//! `.ci/install-tools` installs them (Debian's prometheus and systemd packages).

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn tool(name: &str) -> Command {
    let found =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file())).unwrap_or(false);
    assert!(found, "{name} is not installed: run .ci/install-tools");
    Command::new(name)
}

fn deploy(file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(file)
}

/// Metric names in a Prometheus exposition (histogram series folded to their base name).
fn exported_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .map(|n| {
            ["_bucket", "_sum", "_count"].iter().fold(n, |n, s| n.strip_suffix(s).map(str::to_string).unwrap_or(n))
        })
        .collect()
}

fn names_used(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(p) = text[i..].find("mimic_eye_") {
        let start = i + p;
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_' || bytes[end].is_ascii_digit())
        {
            end += 1;
        }
        let name = &text[start..end];
        let name = ["_bucket", "_sum", "_count"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
        out.insert(name.to_string());
        i = end;
    }
    out
}

#[test]
#[ignore = "needs prometheus: bash .ci/install-tools, then cargo test -- --ignored"]
fn prometheus_scrapes_the_daemon_during_a_build_and_the_names_match_the_deploy_files() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    synth(&input, &["--patients", "30", "--others", "300", "--rows-per-patient", "3000"]);
    let port = free_port();
    let config = write_config(tmp.path(), &input, &tmp.path().join("out"), port, "");

    // Prometheus first, scraping every 200 ms, so it sees the first build (a second or two) run.
    let prom_port = free_port();
    let prom_config = tmp.path().join("prometheus.yml");
    let scrape = fs::read_to_string(deploy("prometheus.yml"))
        .unwrap()
        .replace("scrape_interval: 15s", "scrape_interval: 200ms\n  scrape_timeout: 200ms")
        .replace("/etc/prometheus/mimic-eye-alerts.yml", deploy("alerts.yml").to_str().unwrap())
        .replace("127.0.0.1:9898", &format!("127.0.0.1:{port}"));
    fs::write(&prom_config, scrape).unwrap();
    let mut prom = tool("prometheus")
        .arg(format!("--config.file={}", prom_config.display()))
        .arg(format!("--storage.tsdb.path={}", tmp.path().join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(Stdio::null())
        .stderr(fs::File::create(tmp.path().join("prometheus.log")).unwrap())
        .spawn()
        .unwrap();
    // Prometheus applies discovered targets after a few seconds: wait until it is already
    // scraping (and failing on) the daemon's port, so the first build is seen while it runs.
    let ready = Instant::now() + Duration::from_secs(60);
    while !http_get(prom_port, "/api/v1/targets").is_some_and(|(_, b)| b.contains("\"health\":\"down\""))
        && Instant::now() < ready
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let daemon = Daemon::start(&config, port);

    let query = |q: &str| -> Option<f64> {
        let (_, body) = http_get(prom_port, &format!("/api/v1/query?query={q}"))?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut seen = (None, None);
    while Instant::now() < deadline {
        seen = (query("sum(mimic_eye_rows_read_total)"), query("max_over_time(mimic_eye_build_running[10m])"));
        if seen.0.is_some_and(|v| v > 0.0) && seen.1 == Some(1.0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = prom.kill();
    let _ = prom.wait();
    assert!(seen.0.is_some_and(|v| v > 0.0), "Prometheus read rows_read_total {:?}", seen.0);
    assert_eq!(seen.1, Some(1.0), "Prometheus never scraped the daemon during a build");

    // promtool accepts the exposition, and every name the deploy files use is exported.
    daemon.wait_idle(120);
    let (code, exposition) = http_get(port, "/metrics").unwrap();
    assert_eq!(code, 200);
    let mut check = tool("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let exported = exported_names(&exposition);
    for file in ["alerts.yml", "grafana-dashboard.json", "alerts.test.yml"] {
        for name in names_used(&fs::read_to_string(deploy(file)).unwrap()) {
            assert!(exported.contains(&name), "{file} uses {name}, which the daemon does not export");
        }
    }
    assert!(
        exposition.contains("mimic_eye_build_duration_seconds_bucket"),
        "duration must be a histogram with buckets"
    );
    let (code, _) = http_get(port, "/healthz").unwrap();
    assert_eq!(code, 200);
    let (_, status) = http_get(port, "/status").unwrap();
    assert!(status.contains("\"phase\""));
    daemon.stop();
}

#[test]
#[ignore = "needs promtool: bash .ci/install-tools, then cargo test -- --ignored"]
fn alert_rules_pass_promtool_and_each_alert_fires_on_a_made_up_series() {
    let out = tool("promtool").args(["check", "rules"]).arg(deploy("alerts.yml")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let out = tool("promtool").args(["test", "rules"]).arg(deploy("alerts.test.yml")).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let rules = fs::read_to_string(deploy("alerts.yml")).unwrap();
    let tests = fs::read_to_string(deploy("alerts.test.yml")).unwrap();
    for alert in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        assert!(tests.contains(&format!("alertname: {alert}")), "no promtool test for {alert}");
    }
}

#[test]
#[ignore = "needs systemd-analyze: bash .ci/install-tools, then cargo test -- --ignored"]
fn systemd_unit_verifies_and_rates_ok() {
    let tmp = tempfile::tempdir().unwrap();
    let unit = tmp.path().join("mimic-eye.service");
    let text = fs::read_to_string(deploy("mimic-eye.service"))
        .unwrap()
        .replace("ExecStart=mimic-eye", &format!("ExecStart={}", env!("CARGO_BIN_EXE_mimic-eye")));
    fs::write(&unit, text).unwrap();
    let out = tool("systemd-analyze").arg("verify").arg(&unit).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
    let out = tool("systemd-analyze").args(["security", "--offline=true"]).arg(&unit).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let level: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for mimic-eye.service: ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {text}"));
    assert!(level <= 2.0, "exposure level {level} > 2.0");
    for required in [
        "Type=notify",
        "WatchdogSec=",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=",
        "SystemCallFilter=@system-service",
        "MemoryMax=",
        "LimitNOFILE=",
        "ReadOnlyPaths=",
        "ReadWritePaths=",
    ] {
        assert!(fs::read_to_string(deploy("mimic-eye.service")).unwrap().contains(required), "unit lacks {required}");
    }
}

#[test]
fn log_format_json_writes_one_json_object_per_line() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    synth(&input, &["--patients", "4", "--others", "2"]);
    let out = bin()
        .env("MIMIC_EYE_LOG", "info")
        .args(["--log-format", "json", "build", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(tmp.path().join("out"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let logs = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> =
        logs.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}"))).collect();
    assert!(lines.len() > 5);
    assert!(lines.iter().any(|l| l["fields"]["message"] == "table published" && l["level"] == "INFO"));
}
