//! Helpers shared by the end-to-end tests: they drive the real binary on real files.
#![allow(dead_code)]

pub mod physionet;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mimic-eye"));
    c.env("MIMIC_EYE_LOG", "warn");
    c
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("binary runs");
    assert!(
        out.status.success(),
        "command failed: {:?}\nstdout: {}\nstderr: {}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn demo_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/mimic-iv-demo")
}

pub fn synth(dir: &Path, args: &[&str]) -> serde_json::Value {
    let mut cmd = bin();
    cmd.arg("synth").arg("--output").arg(dir).args(args);
    run_ok(&mut cmd);
    serde_json::from_slice(&fs::read(dir.join("synth-planted.json")).unwrap()).unwrap()
}

pub fn build(input: &Path, output: &Path, args: &[&str]) -> serde_json::Value {
    let mut cmd = bin();
    cmd.arg("build").arg("--input").arg(input).arg("--output").arg(output).args(args);
    run_ok(&mut cmd);
    summary(output)
}

pub fn summary(output: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(output.join("summary.json")).unwrap()).unwrap()
}

/// Reads a table file, decompressing `.gz`.
pub fn read_table(path: &Path) -> Vec<u8> {
    let raw = fs::read(path).unwrap();
    if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..]).read_to_end(&mut out).unwrap();
        out
    } else {
        raw
    }
}

/// Every output file (relative path → `value` of it), skipping the state folder, the summary,
/// the report and the output's SHA256SUMS.txt (which lists the summary, so it changes with
/// every build).
pub fn output_files<T>(root: &Path, value: impl Fn(&Path) -> T + Copy) -> BTreeMap<PathBuf, T> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let report = ["summary.json", "SHA256SUMS.txt", "report.html"];
            if rel.starts_with(".mimic-eye") || report.iter().any(|r| rel == Path::new(r)) {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else {
                out.insert(rel, value(&p));
            }
        }
    }
    out
}

/// Every output file's bytes.
pub fn tree(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    output_files(root, |p| fs::read(p).unwrap())
}

/// Every output file's modification time.
pub fn mtimes(root: &Path) -> BTreeMap<PathBuf, std::time::SystemTime> {
    output_files(root, |p| fs::metadata(p).unwrap().modified().unwrap())
}

/// Asserts rows read = written + outside cohort + rejected for every table of a summary.
pub fn assert_balanced(summary: &serde_json::Value) {
    for (table, c) in summary["tables"].as_object().unwrap() {
        let n = |k: &str| c[k].as_u64().unwrap();
        assert_eq!(n("read"), n("written") + n("outside_cohort") + n("rejected"), "row balance of {table}");
    }
}

/// A synthetic input (`synth` with `args`) in a temporary folder, the output beside it:
/// `<root>/in` and `<root>/out`.
pub struct World {
    pub _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub input: PathBuf,
    pub output: PathBuf,
    pub planted: serde_json::Value,
}

impl World {
    pub fn synth(args: &[&str]) -> World {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let input = root.join("in");
        let planted = synth(&input, args);
        World { output: root.join("out"), _tmp: tmp, root, input, planted }
    }

    /// `build --input <in> --output <out>`, however it ends.
    pub fn build(&self) -> Output {
        bin().arg("build").arg("--input").arg(&self.input).arg("--output").arg(&self.output).output().unwrap()
    }

    /// A daemon on the world, once its first build is done.
    pub fn daemon(&self, extra: &str) -> Daemon {
        let port = free_port();
        let d = Daemon::start(&write_config(&self.root, &self.input, &self.output, port, extra), port);
        d.wait_idle(120);
        d
    }

    /// The `i`-th cohort subject synth planted.
    pub fn subject(&self, i: usize) -> u64 {
        self.planted["cohort"][i].as_u64().unwrap()
    }
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A plain HTTP GET on loopback: (status code, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let code = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((code, body))
}

/// A running daemon on a config of its own; killed when dropped.
pub struct Daemon {
    pub child: std::process::Child,
    pub port: u16,
    pub config: PathBuf,
    pub log: PathBuf,
}

pub fn write_config(dir: &Path, input: &Path, output: &Path, port: u16, extra: &str) -> PathBuf {
    let config = dir.join(format!("daemon-{port}.toml"));
    fs::write(
        &config,
        format!(
            "input = {input:?}\noutput = {output:?}\nmetrics_addr = \"127.0.0.1:{port}\"\nsettle_seconds = 1\nrescan_seconds = 2\n{extra}"
        ),
    )
    .unwrap();
    config
}

impl Daemon {
    pub fn start(config: &Path, port: u16) -> Daemon {
        let log = config.with_extension(format!(
            "log{}",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
        ));
        let file = fs::File::create(&log).unwrap();
        let child = bin()
            .env("MIMIC_EYE_LOG", "info")
            .args(["run", "--config"])
            .arg(config)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Daemon { child, port, config: config.to_path_buf(), log }
    }

    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = http_get(self.port, "/metrics")?;
        body.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .reduce(|a, b| a + b)
    }

    /// Waits until the daemon is idle with no pending inputs, twice in a row over a second.
    pub fn wait_idle(&self, timeout_secs: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout_secs);
        let mut calm = 0;
        while std::time::Instant::now() < deadline {
            let idle = http_get(self.port, "/status").is_some_and(|(_, b)| b.contains("\"phase\": \"idle\""));
            let pending = self.metric("mimic_eye_inputs_pending").unwrap_or(1.0);
            let running = self.metric("mimic_eye_build_running").unwrap_or(1.0);
            calm = if idle && pending == 0.0 && running == 0.0 { calm + 1 } else { 0 };
            if calm >= 6 {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        panic!("daemon not idle after {timeout_secs}s; log:\n{}", self.log_text());
    }

    /// Waits until the daemon exits on its own, at most `timeout`; its exit status.
    pub fn wait_exit(&mut self, timeout: std::time::Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "still running after {timeout:?}:\n{}", self.log_text());
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    pub fn builds(&self) -> f64 {
        self.metric("mimic_eye_builds_total").unwrap_or(0.0)
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGTERM, then the exit status and how long it took.
    pub fn stop(mut self) -> (std::process::ExitStatus, std::time::Duration) {
        let t = std::time::Instant::now();
        self.signal(libc::SIGTERM);
        let status = self.child.wait().unwrap();
        (status, t.elapsed())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd`, failing the test if it has not ended within `timeout` (a hang is the defect).
pub fn output_within(cmd: &mut Command, timeout: std::time::Duration) -> Output {
    let mut child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let deadline = std::time::Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("{cmd:?} hangs: not ended after {timeout:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

/// A CSV as (header, rows), fields as written (an index column's name is "").
pub fn csv_table(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut r = csv::ReaderBuilder::new().from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header = r.headers().unwrap().iter().map(str::to_string).collect();
    (header, r.records().map(|x| x.unwrap().iter().map(str::to_string).collect()).collect())
}

/// A column's index in a header, by name.
pub fn col(header: &[String], name: &str) -> usize {
    header.iter().position(|h| h == name).unwrap_or_else(|| panic!("no column {name:?} in {header:?}"))
}
