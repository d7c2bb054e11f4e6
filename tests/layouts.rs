//! Input layouts end to end: a PhysioNet wget mirror (given as `physionet.org/files` or as the
//! folder above it) builds exactly what the short layout builds, several versions need a pin,
//! MIMIC-IV 1.0's `core/` is read as Hosp, and `mimic-eye inputs` reports what was found.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;
use sha2::{Digest, Sha256};

const SEED: &str = "5";

fn synth_args(extra: &[&str]) -> Vec<String> {
    ["--patients", "8", "--others", "6", "--seed", SEED].iter().chain(extra).map(|s| s.to_string()).collect()
}

fn synth_in(dir: &Path, extra: &[&str]) -> serde_json::Value {
    let args = synth_args(extra);
    synth(dir, &args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn files(root: &Path) -> PathBuf {
    root.join("physionet.org/files")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// The one-line cause a failed command ends with.
fn cause(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let last = err.lines().last().unwrap_or("").to_string();
    assert!(last.starts_with("mimic-eye: "), "no one-line cause at the end: {err}");
    last
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn build_cmd(input: &Path, output: &Path, extra: &[&str]) -> Output {
    let mut cmd = bin();
    cmd.arg("build").arg("--input").arg(input).arg("--output").arg(output).args(extra);
    cmd.output().unwrap()
}

/// Every file below `dir`, relative, `/`-separated.
fn all_files(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    for e in fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().into_string().unwrap();
        let rel = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        if e.file_type().unwrap().is_dir() {
            all_files(&e.path(), &rel, out);
        } else {
            out.push(rel);
        }
    }
}

#[test]
fn a_mirror_builds_the_same_files_as_the_short_layout() {
    let t = tempfile::tempdir().unwrap();
    let (short, mirror) = (t.path().join("short"), t.path().join("mirror"));
    let planted = synth_in(&short, &[]);
    synth_in(&mirror, &["--layout", "physionet"]);
    assert!(!mirror.join("mimiciv").exists(), "the mirror layout wrote a short-layout folder");
    assert!(files(&mirror).join("reflacx-xray-localization/1.0.0/main_data").is_dir());

    let s = build(&short, &t.path().join("out-short"), &[]);
    let expected = tree(&t.path().join("out-short"));
    assert_eq!(s["patients"], planted["patients"]);
    assert!(expected.contains_key(Path::new("spreadsheets/Hosp/patients.csv")));
    assert!(expected.keys().any(|k| k.ends_with("REFLACX/metadata.csv")));
    assert!(expected.keys().any(|k| k.extension().is_some_and(|e| e == "jpg")));
    assert!(expected.len() > 100, "only {} files", expected.len());

    for input in [files(&mirror), mirror.clone()] {
        let out = t.path().join(format!("out-{}", input.components().count()));
        let m = build(&input, &out, &[]);
        assert_eq!(m["tables"], s["tables"], "row counts with --input {}", input.display());
        let got = tree(&out);
        let differ: Vec<_> = expected.keys().filter(|k| got.get(*k) != expected.get(*k)).collect();
        assert!(differ.is_empty(), "--input {}: {} files differ, first {:?}", input.display(), differ.len(), differ[0]);
        let extra: Vec<_> = got.keys().filter(|k| !expected.contains_key(*k)).collect();
        assert!(extra.is_empty(), "--input {}: extra files {extra:?}", input.display());
    }
}

#[test]
fn synth_mirror_has_listing_pages_and_physionet_checksums() {
    let t = tempfile::tempdir().unwrap();
    synth_in(t.path(), &["--layout", "physionet"]);
    let versions = [
        "mimiciv/2.2",
        "mimic-iv-ed/2.2",
        "mimic-cxr-jpg/2.0.0",
        "mimic-cxr/2.0.0",
        "reflacx-xray-localization/1.0.0",
        "egd-cxr/1.0.0",
    ];
    for v in versions {
        let dir = files(t.path()).join(v);
        let text = fs::read_to_string(dir.join("SHA256SUMS.txt")).unwrap();
        assert!(text.ends_with('\n') && !text.contains('\r'), "{v}: not LF-terminated lines");
        let mut listed = Vec::new();
        for line in text.lines() {
            let (hash, path) = line.split_once(' ').unwrap();
            assert!(
                hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{line}"
            );
            let digest = Sha256::digest(fs::read(dir.join(path)).unwrap());
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(hash, hex, "{v}/{path}");
            listed.push(path.to_string());
        }
        let mut sorted = listed.clone();
        sorted.sort();
        assert_eq!(listed, sorted, "{v}: not sorted by path");
        // Every file but the list itself and wget's listing pages (as on PhysioNet).
        let mut on_disk = Vec::new();
        all_files(&dir, "", &mut on_disk);
        on_disk.retain(|f| f != "SHA256SUMS.txt" && !f.ends_with("index.html"));
        on_disk.sort();
        assert_eq!(listed, on_disk, "{v}");
        assert!(listed.len() >= 3, "{v}: {listed:?}");
    }
    // A listing page in every folder of the mirror.
    let mut dirs = vec![t.path().join("physionet.org")];
    let mut seen = 0;
    while let Some(d) = dirs.pop() {
        assert!(d.join("index.html").is_file(), "no index.html in {}", d.display());
        seen += 1;
        dirs.extend(fs::read_dir(&d).unwrap().flatten().filter(|e| e.file_type().unwrap().is_dir()).map(|e| e.path()));
    }
    assert!(seen > 20, "{seen} folders");
    assert!(t.path().join("synth-planted.json").is_file());
}

#[test]
fn two_mimiciv_versions_need_a_pin() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("in");
    synth_in(&root, &["--layout", "physionet"]);
    let mimiciv = files(&root).join("mimiciv");
    copy_dir(&mimiciv.join("2.2"), &mimiciv.join("3.1"));
    // Tell the versions apart in the output: 3.1 lacks the provider table.
    fs::remove_file(mimiciv.join("3.1/hosp/provider.csv.gz")).unwrap();

    let out = t.path().join("out");
    let o = build_cmd(&root, &out, &[]);
    assert!(!o.status.success(), "built with two versions and no pin");
    let err = cause(&o);
    assert!(err.contains("2.2, 3.1") && err.contains("[versions] mimiciv = \""), "{err}");
    assert!(!out.join("summary.json").exists(), "a build started");

    for (pin, has_provider) in [("2.2", true), ("3.1", false)] {
        let config = t.path().join(format!("pin-{pin}.toml"));
        fs::write(&config, format!("[versions]\nmimiciv = \"{pin}\"\n")).unwrap();
        let out = t.path().join(format!("out-{pin}"));
        let s = build(&root, &out, &["--config", config.to_str().unwrap()]);
        let tables = s["tables"].as_object().unwrap();
        assert!(tables.contains_key("hosp/admissions"), "pin {pin}: {tables:?}");
        assert_eq!(tables.contains_key("hosp/provider"), has_provider, "pin {pin}");
        assert_eq!(out.join("spreadsheets/Hosp/provider.csv").exists(), has_provider, "pin {pin}");
    }

    // A pin naming a version that is not there is refused, naming what is.
    let config = t.path().join("pin-bad.toml");
    fs::write(&config, "[versions]\nmimiciv = \"2.0\"\n").unwrap();
    let o = build_cmd(&root, &t.path().join("out-bad"), &["--config", config.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = cause(&o);
    assert!(err.contains("mimiciv = \"2.0\"") && err.contains("found: 2.2, 3.1"), "{err}");
}

#[test]
fn mimiciv_1_0_core_tables_are_hosp() {
    let t = tempfile::tempdir().unwrap();
    let (v10, v22) = (t.path().join("v10"), t.path().join("v22"));
    synth_in(&v10, &["--layout", "physionet", "--mimiciv-version", "1.0"]);
    synth_in(&v22, &["--layout", "physionet"]);
    let m = files(&v10).join("mimiciv/1.0");
    for table in ["admissions", "patients", "transfers"] {
        assert!(m.join(format!("core/{table}.csv.gz")).is_file(), "{table} not in core/");
        assert!(!m.join(format!("hosp/{table}.csv.gz")).exists(), "{table} in hosp/");
    }

    let s10 = build(&v10, &t.path().join("out10"), &[]);
    let s22 = build(&v22, &t.path().join("out22"), &[]);
    let tables = s10["tables"].as_object().unwrap();
    for key in ["hosp/admissions", "hosp/patients", "hosp/transfers", "hosp/labevents"] {
        assert!(tables.contains_key(key), "{key} missing: {tables:?}");
        assert!(s10["tables"][key]["read"].as_u64().unwrap() > 0, "{key}");
    }
    assert_eq!(s10["tables"], s22["tables"]);
    let (got, expected) = (tree(&t.path().join("out10")), tree(&t.path().join("out22")));
    assert!(got.contains_key(Path::new("spreadsheets/Hosp/patients.csv")));
    let admissions = got.keys().filter(|k| k.ends_with("Hosp/admissions.csv")).count();
    let transfers = got.keys().filter(|k| k.ends_with("Hosp/transfers.csv")).count();
    assert_eq!(admissions, s10["patients"].as_u64().unwrap() as usize, "patients with Hosp/admissions.csv");
    assert!(transfers > 0);
    assert!(got == expected, "1.0 and 2.2 layouts of one seed built different files");
}

#[test]
fn inputs_reports_versions_checksums_and_what_is_missing() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("in");
    synth_in(&root, &["--layout", "physionet"]);
    fs::remove_file(files(&root).join("mimic-cxr/2.0.0/SHA256SUMS.txt")).unwrap();

    let o = run_ok(bin().arg("inputs").arg("--input").arg(files(&root)));
    let text = stdout(&o);
    for (title, version) in [
        ("MIMIC-IV [mimiciv]", "2.2"),
        ("MIMIC-IV-ED [mimic_iv_ed]", "2.2"),
        ("MIMIC-CXR-JPG [mimic_cxr_jpg]", "2.0.0"),
        ("MIMIC-CXR [mimic_cxr]", "2.0.0"),
        ("REFLACX [reflacx]", "1.0.0"),
        ("EyeGaze (EGD-CXR) [egd_cxr]", "1.0.0"),
    ] {
        let section = text.split(&format!("\n{title}\n")).nth(1).unwrap_or_else(|| panic!("no {title} in:\n{text}"));
        let section = section.split("\n\n").next().unwrap();
        assert!(section.contains(&format!("version: {version}\n")), "{title}:\n{section}");
        let sums = if title.starts_with("MIMIC-CXR [") { "absent" } else { "present" };
        assert!(section.contains(&format!("SHA256SUMS.txt: {sums}")), "{title}:\n{section}");
    }
    assert!(text.contains("hosp/labevents") && text.contains(".csv.gz"), "{text}");
    assert!(text.contains("missing: nothing"), "{text}");

    let o = run_ok(bin().args(["inputs", "--json", "--input"]).arg(&root));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let versions: Vec<&str> =
        j["datasets"].as_array().unwrap().iter().map(|d| d["version"].as_str().unwrap()).collect();
    assert_eq!(versions, ["2.2", "2.2", "2.0.0", "2.0.0", "1.0.0", "1.0.0"]);
    let hosp = j["datasets"][0]["tables"].as_array().unwrap();
    let adm = hosp.iter().find(|t| t["name"] == "hosp/admissions").unwrap();
    assert_eq!(adm["format"], "csv.gz");
    let size = fs::metadata(files(&root).join("mimiciv/2.2/hosp/admissions.csv.gz")).unwrap().len();
    assert_eq!(adm["bytes"], size);

    // Without MIMIC-IV: inputs says so and fails; the build's error points to inputs.
    fs::rename(files(&root).join("mimiciv"), t.path().join("kept-mimiciv")).unwrap();
    let o = bin().arg("inputs").arg("--input").arg(&root).output().unwrap();
    assert!(!o.status.success());
    let text = stdout(&o);
    assert!(text.contains("MIMIC-IV [mimiciv]\n  not found"), "{text}");
    assert!(text.contains("required: mimiciv"), "{text}");
    let o = build_cmd(&root, &t.path().join("out"), &[]);
    assert!(!o.status.success());
    let err = cause(&o);
    assert!(
        err.contains("required dataset MIMIC-IV is missing")
            && err.ends_with("(run `mimic-eye inputs` to see what was found)"),
        "{err}"
    );
}
