//! Helpers shared by the end-to-end tests: they drive the real binary on real files.
#![allow(dead_code)]

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

/// Every file under `root` (relative path → bytes), skipping the state folder and summary.
pub fn tree(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if rel.starts_with(".mimic-eye") || rel == Path::new("summary.json") {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(rel, fs::read(&p).unwrap());
            }
        }
    }
    walk(root, root, &mut out);
    out
}

/// Asserts rows read = written + outside cohort + rejected for every table of a summary.
pub fn assert_balanced(summary: &serde_json::Value) {
    for (table, c) in summary["tables"].as_object().unwrap() {
        let n = |k: &str| c[k].as_u64().unwrap();
        assert_eq!(n("read"), n("written") + n("outside_cohort") + n("rejected"), "row balance of {table}");
    }
}
