//! Integrity end to end (issue 15, items 4–8): downloads checked against PhysioNet's
//! SHA256SUMS.txt while they are read, provenance in summary.json, the output's own
//! SHA256SUMS.txt and `mimic-eye verify`, and the ways copied folders' files are placed.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

const MISMATCH: &str = "SHA-256 differs from SHA256SUMS.txt: the download is incomplete or damaged";

fn files(root: &Path) -> PathBuf {
    root.join("physionet.org/files")
}

fn mirror(dir: &Path) {
    synth(dir, &["--patients", "8", "--others", "6", "--seed", "5", "--layout", "physionet"]);
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

fn build_out(input: &Path, output: &Path, extra: &[&str]) -> Output {
    bin().arg("build").arg("--input").arg(input).arg("--output").arg(output).args(extra).output().unwrap()
}

fn verify_out(output: &Path) -> Output {
    bin().arg("verify").arg("--output").arg(output).output().unwrap()
}

fn inputs_out(input: &Path, extra: &[&str]) -> Output {
    bin().arg("inputs").arg("--input").arg(input).args(extra).output().unwrap()
}

/// `sha256sum -c` from coreutils, run in `dir`.
fn sha256sum_check(dir: &Path) -> Output {
    Command::new("sha256sum").args(["-c", "--strict", "SHA256SUMS.txt"]).current_dir(dir).output().unwrap()
}

/// The first file below `dir` whose name ends with `suffix`.
fn find(dir: &Path, suffix: &str) -> Option<PathBuf> {
    let mut entries: Vec<_> = fs::read_dir(dir).ok()?.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            if let Some(f) = find(&p, suffix) {
                return Some(f);
            }
        } else if p.to_string_lossy().ends_with(suffix) {
            return Some(p);
        }
    }
    None
}

/// Files the copied-folder jobs have in the output, by their summary counts.
fn copied_folder_files(s: &serde_json::Value) -> u64 {
    s["tables"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with("files/"))
        .map(|(_, c)| c["written"].as_u64().unwrap())
        .sum()
}

fn placed_total(s: &serde_json::Value) -> u64 {
    ["linked", "copied", "reflinked", "symlinked", "written"].iter().map(|k| s["files"][k].as_u64().unwrap()).sum()
}

#[test]
fn a_clean_mirror_is_verified_and_the_output_manifest_checks() {
    let t = tempfile::tempdir().unwrap();
    let (input, out) = (t.path().join("in"), t.path().join("out"));
    mirror(&input);
    let s = build(&input, &out, &[]);
    let versions = [
        ("mimiciv", "2.2"),
        ("mimic_iv_ed", "2.2"),
        ("mimic_cxr_jpg", "2.0.0"),
        ("mimic_cxr", "2.0.0"),
        ("reflacx", "1.0.0"),
        ("egd_cxr", "1.0.0"),
    ];
    for (key, version) in versions {
        let d = &s["datasets"][key];
        assert_eq!(d["sha256sums"], "verified", "{key}: {d}");
        assert_eq!(d["version"], version, "{key}");
        assert!(Path::new(d["root"].as_str().unwrap()).is_absolute(), "{key}: {d}");
    }
    // Every hosp and icu table of the synthetic MIMIC-IV was read and checked.
    let mimiciv_tables =
        s["tables"].as_object().unwrap().keys().filter(|k| k.starts_with("hosp/") || k.starts_with("icu/")).count();
    assert_eq!(s["datasets"]["mimiciv"]["tables"].as_u64().unwrap() as usize, mimiciv_tables);
    assert!(s["datasets"]["mimiciv"]["checked"].as_u64().unwrap() >= mimiciv_tables as u64);
    assert_eq!(s["datasets"]["egd_cxr"]["tables"], 4, "master sheet + eye_gaze, fixations, bounding_boxes");
    assert_eq!(s["program"]["name"], "mimic-eye");
    assert_eq!(s["program"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["settings"]["files"], "hardlink");
    assert_eq!(s["settings"]["profile"], "paper");
    assert_eq!(s["settings"]["window_days"], 0);
    assert_eq!(s["settings"]["index_column"], true);
    assert_eq!(placed_total(&s), copied_folder_files(&s), "{}", s["files"]);
    assert!(s["files"]["linked"].as_u64().unwrap() > 0, "{}", s["files"]);

    // The output's manifest: every file but itself and the state folder, sorted, checkable.
    let sums = fs::read_to_string(out.join("SHA256SUMS.txt")).unwrap();
    let paths: Vec<&str> = sums.lines().map(|l| l.split_once(' ').unwrap().1).collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted, "not sorted by path");
    assert!(paths.contains(&"summary.json") && paths.contains(&"spreadsheets/cxr_meta.csv"));
    assert!(!paths.iter().any(|p| p.starts_with(".mimic-eye") || *p == "SHA256SUMS.txt"));
    // tree() leaves summary.json, report.html and SHA256SUMS.txt out.
    assert!(paths.contains(&"report.html"));
    assert_eq!(paths.len(), tree(&out).len() + 2, "every file (and summary.json, report.html) listed");
    let c = sha256sum_check(&out);
    assert!(c.status.success(), "sha256sum -c: {}{}", text(&c.stdout), text(&c.stderr));
    let v = verify_out(&out);
    assert!(v.status.success(), "{}{}", text(&v.stdout), text(&v.stderr));
    assert!(text(&v.stdout).contains(&format!(
        "{} listed, {} verified, 0 changed, 0 missing, 0 extra",
        paths.len(),
        paths.len()
    )));

    // A build that changes nothing: every line the same but summary.json's and report.html's
    // (their durations).
    let again = build(&input, &out, &[]);
    assert_eq!(again["datasets"]["mimiciv"]["sha256sums"], "verified");
    let sums2 = fs::read_to_string(out.join("SHA256SUMS.txt")).unwrap();
    let without_summary = |s: &str| {
        s.lines()
            .filter(|l| !l.ends_with(" summary.json") && !l.ends_with(" report.html"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(without_summary(&sums), without_summary(&sums2));
    assert_eq!(sums.lines().count(), sums2.lines().count());
    assert!(sha256sum_check(&out).status.success());

    // Damage: one file changed, one deleted, one added.
    let changed = out.join("spreadsheets/cxr_meta.csv");
    fs::OpenOptions::new().append(true).open(&changed).unwrap().write_all(b"x").unwrap();
    let gone = out.join("spreadsheets/Hosp/patients.csv");
    fs::remove_file(&gone).unwrap();
    fs::write(out.join("spreadsheets/stray.csv"), "a\n").unwrap();
    fs::write(out.join(".mimic-eye/ignored"), "state").unwrap();
    let v = verify_out(&out);
    assert!(!v.status.success());
    let report = text(&v.stdout);
    assert!(report.contains("changed: spreadsheets/cxr_meta.csv"), "{report}");
    assert!(report.contains("missing: spreadsheets/Hosp/patients.csv"), "{report}");
    assert!(report.contains("extra: spreadsheets/stray.csv"), "{report}");
    assert!(!report.contains(".mimic-eye"), "{report}");
    assert!(report.contains("1 changed, 1 missing, 1 extra"), "{report}");
    assert!(text(&v.stderr).contains("does not match its SHA256SUMS.txt"), "{}", text(&v.stderr));
    // A listing put in another order (the build's is read beside a walk in path order): the
    // same findings.
    let mut lines: Vec<&str> = sums2.lines().collect();
    lines.reverse();
    fs::write(out.join("SHA256SUMS.txt"), lines.join("\n") + "\n").unwrap();
    let reordered = text(&verify_out(&out).stdout);
    assert_eq!(reordered.lines().last(), report.lines().last(), "{reordered}");
    assert!(reordered.contains("missing: spreadsheets/Hosp/patients.csv"), "{reordered}");
}

/// Rewrites a `.csv.gz` as a valid gzip whose first data row has one digit changed.
fn change_one_value(path: &Path) {
    let mut csv = Vec::new();
    flate2::read::MultiGzDecoder::new(fs::File::open(path).unwrap()).read_to_end(&mut csv).unwrap();
    let header_end = csv.iter().position(|&b| b == b'\n').unwrap();
    let row_end = header_end + 1 + csv[header_end + 1..].iter().position(|&b| b == b'\n').unwrap();
    let at = (header_end + 1..row_end).rev().find(|&i| csv[i].is_ascii_digit()).expect("a digit in the first row");
    csv[at] = if csv[at] == b'9' { b'8' } else { csv[at] + 1 };
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&csv).unwrap();
    fs::write(path, gz.finish().unwrap()).unwrap();
}

#[test]
fn a_table_that_differs_from_its_sha256sums_line_fails_and_keeps_its_output() {
    let t = tempfile::tempdir().unwrap();
    let (input, out) = (t.path().join("in"), t.path().join("out"));
    mirror(&input);
    build(&input, &out, &[]);
    let before = tree(&out);
    let lab: Vec<PathBuf> = before.keys().filter(|k| k.ends_with("Hosp/labevents.csv")).cloned().collect();
    assert!(!lab.is_empty());

    let table = files(&input).join("mimiciv/2.2/hosp/labevents.csv.gz");
    change_one_value(&table);
    let o = build_out(&input, &out, &[]);
    assert!(!o.status.success(), "a damaged table must fail the build");
    let err = text(&o.stderr);
    assert!(err.contains(MISMATCH) && err.contains("labevents.csv.gz"), "{err}");
    let s = summary(&out);
    let failure = s["failed"]["hosp/labevents"].as_str().unwrap();
    assert!(failure.contains(MISMATCH) && failure.contains(&table.display().to_string()), "{failure}");
    assert_eq!(s["datasets"]["mimiciv"]["sha256sums"], "mismatch");
    assert_eq!(s["datasets"]["mimiciv"]["mismatched"][0], table.display().to_string());
    assert_eq!(s["datasets"]["mimic_iv_ed"]["sha256sums"], "verified");
    // Its previous output is kept, byte for byte; its staging is gone.
    let after = tree(&out);
    for k in &lab {
        assert_eq!(after.get(k), before.get(k), "{} changed", k.display());
    }
    assert!(!out.join(".mimic-eye/staging/hosp__labevents").exists());
    // Still damaged on the next build (the previous output's record is not taken as a pass).
    let o = build_out(&input, &out, &[]);
    assert!(!o.status.success());
    assert_eq!(summary(&out)["datasets"]["mimiciv"]["sha256sums"], "mismatch");
    // A table not listed is not checked: drop its line and the build succeeds.
    let sums_path = files(&input).join("mimiciv/2.2/SHA256SUMS.txt");
    let sums = fs::read_to_string(&sums_path).unwrap();
    fs::write(
        &sums_path,
        sums.lines().filter(|l| !l.ends_with(" hosp/labevents.csv.gz")).map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    let s = build(&input, &out, &[]);
    assert_eq!(s["datasets"]["mimiciv"]["sha256sums"], "verified");
    assert!(s["failed"].as_object().unwrap().is_empty(), "{}", s["failed"]);
}

#[test]
fn inputs_reports_missing_files_and_verify_catches_a_changed_image() {
    let t = tempfile::tempdir().unwrap();
    let input = t.path().join("in");
    mirror(&input);
    let ed = files(&input).join("mimic-iv-ed/2.2");
    let gone = find(&ed.join("ed"), "triage.csv.gz").unwrap();
    fs::remove_file(&gone).unwrap();
    fs::write(ed.join("ed/extra_table.csv"), "subject_id\n1\n").unwrap();
    let o = inputs_out(&input, &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let report = text(&o.stdout);
    assert!(report.contains("listed in SHA256SUMS.txt but missing: 1\n    ed/triage.csv.gz"), "{report}");
    assert!(report.contains("tables not in SHA256SUMS.txt (not checked): 1\n    ed/extra_table.csv"), "{report}");
    let json: serde_json::Value = serde_json::from_slice(&inputs_out(&input, &["--json"]).stdout).unwrap();
    let ed_report = json["datasets"].as_array().unwrap().iter().find(|d| d["key"] == "mimic_iv_ed").unwrap();
    assert_eq!(ed_report["listed_missing"]["count"], 1);
    assert_eq!(ed_report["listed_missing"]["first"][0], "ed/triage.csv.gz");

    // --verify hashes everything: the changed image, the missing table, the unlisted file.
    let jpg_root = files(&input).join("mimic-cxr-jpg/2.0.0");
    let image = find(&jpg_root.join("files"), ".jpg").unwrap();
    let mut bytes = fs::read(&image).unwrap();
    bytes[0] ^= 1;
    fs::write(&image, bytes).unwrap();
    let o = inputs_out(&input, &["--verify"]);
    assert!(!o.status.success(), "a changed image must fail --verify");
    let report = text(&o.stdout);
    let rel = image.strip_prefix(&jpg_root).unwrap().display().to_string();
    assert!(report.contains(&format!("SHA-256 differs (incomplete or damaged): 1\n    {rel}")), "{report}");
    assert!(report.contains("listed but missing: 1\n    ed/triage.csv.gz"), "{report}");
    assert!(report.contains("present but not listed: 1\n    ed/extra_table.csv"), "{report}");
    assert!(!report.contains("index.html"), "{report}");
    assert!(text(&o.stderr).contains("1 file(s) differ, 1 listed file(s) missing"), "{}", text(&o.stderr));
}

fn config(dir: &Path, input: &Path, output: &Path, files: &str) -> PathBuf {
    let path = dir.join(format!("{files}.toml"));
    fs::write(&path, format!("input = {input:?}\noutput = {output:?}\nfiles = \"{files}\"\n")).unwrap();
    path
}

#[test]
fn symlink_and_reflink_modes_place_files_that_match_their_source() {
    let t = tempfile::tempdir().unwrap();
    let input = t.path().join("in");
    mirror(&input);
    let jpg_root = files(&input).join("mimic-cxr-jpg/2.0.0/files");

    let out = t.path().join("out-symlink");
    let cfg = config(t.path(), &input, &out, "symlink");
    run_ok(bin().arg("build").arg("--config").arg(&cfg));
    let s = summary(&out);
    assert_eq!(s["settings"]["files"], "symlink");
    let image = find(&out, ".jpg").unwrap();
    let meta = fs::symlink_metadata(&image).unwrap();
    assert!(meta.file_type().is_symlink(), "{} is not a symbolic link", image.display());
    let target = fs::read_link(&image).unwrap();
    assert!(
        target.is_absolute() && target.starts_with(std::path::absolute(&jpg_root).unwrap()),
        "{}",
        target.display()
    );
    assert_eq!(fs::read(&image).unwrap(), fs::read(&target).unwrap());
    assert_eq!(
        s["files"]["symlinked"].as_u64().unwrap() + s["files"]["written"].as_u64().unwrap(),
        copied_folder_files(&s)
    );
    assert_eq!(s["files"]["linked"], 0);
    assert_eq!(s["files"]["copied"], 0);
    assert!(sha256sum_check(&out).status.success());
    assert!(verify_out(&out).status.success());
    // A rebuild keeps the links; switching to copies replaces them with files.
    let s = build(&input, &out, &["--config", cfg.to_str().unwrap()]);
    assert_eq!(
        s["files"]["symlinked"].as_u64().unwrap() + s["files"]["written"].as_u64().unwrap(),
        copied_folder_files(&s)
    );
    let copy_cfg = config(t.path(), &input, &out, "copy");
    run_ok(bin().arg("build").arg("--config").arg(&copy_cfg));
    assert!(!fs::symlink_metadata(&image).unwrap().file_type().is_symlink(), "copy mode kept a symbolic link");
    let s = summary(&out);
    assert_eq!(
        s["files"]["copied"].as_u64().unwrap() + s["files"]["written"].as_u64().unwrap(),
        copied_folder_files(&s)
    );
    assert!(sha256sum_check(&out).status.success());

    let out = t.path().join("out-reflink");
    let cfg = config(t.path(), &input, &out, "reflink");
    run_ok(bin().arg("build").arg("--config").arg(&cfg));
    let s = summary(&out);
    let image = find(&out, ".jpg").unwrap();
    assert!(fs::symlink_metadata(&image).unwrap().file_type().is_file());
    let rel = image.strip_prefix(&out).unwrap();
    let name = rel.file_name().unwrap();
    let source = find(&jpg_root, &name.to_string_lossy()).unwrap();
    assert_eq!(fs::read(&image).unwrap(), fs::read(&source).unwrap());
    use std::os::unix::fs::MetadataExt;
    assert_ne!(fs::metadata(&image).unwrap().ino(), fs::metadata(&source).unwrap().ino());
    assert_eq!(fs::metadata(&image).unwrap().mode() & 0o777, 0o640);
    let f = &s["files"];
    let (reflinked, copied) = (f["reflinked"].as_u64().unwrap(), f["copied"].as_u64().unwrap());
    assert_eq!(reflinked + copied + f["written"].as_u64().unwrap(), copied_folder_files(&s), "{f}");
    // Where the file system cannot clone (ext4, tmpfs), every file is copied and the reason said.
    if copied > 0 {
        assert_eq!(reflinked, 0, "{f}");
        assert!(f["link_failure"].as_str().unwrap().starts_with("copy-on-write clone failed"), "{f}");
        assert!(f["copied_bytes"].as_u64().unwrap() > 0, "{f}");
    } else {
        assert!(f["link_failure"].is_null(), "{f}");
    }
    assert!(sha256sum_check(&out).status.success());
}

#[test]
fn a_newer_version_beside_the_pinned_one_is_reported_not_used() {
    let t = tempfile::tempdir().unwrap();
    let (input, out) = (t.path().join("in"), t.path().join("out"));
    mirror(&input);
    fs::create_dir_all(files(&input).join("mimiciv/3.1/hosp")).unwrap();
    let cfg = t.path().join("pinned.toml");
    fs::write(&cfg, format!("input = {input:?}\noutput = {out:?}\n[versions]\nmimiciv = \"2.2\"\n")).unwrap();
    let o = run_ok(bin().arg("build").arg("--config").arg(&cfg));
    let err = text(&o.stderr);
    assert!(err.contains("a newer version of MIMIC-IV") && err.contains("3.1"), "{err}");
    let s = summary(&out);
    assert_eq!(s["datasets"]["mimiciv"]["version"], "2.2");
    assert_eq!(s["datasets"]["mimiciv"]["newer_version"], "3.1");
    assert!(s["datasets"]["mimiciv"]["root"].as_str().unwrap().ends_with("mimiciv/2.2"));
    assert!(s["datasets"]["reflacx"].get("newer_version").is_none());
}

#[test]
#[ignore = "needs root (to run the build as nobody) and fs.protected_hardlinks = 1: cargo test -- --ignored as root"]
fn hard_links_refused_to_a_service_user_fall_back_to_counted_copies() {
    let protected = fs::read_to_string("/proc/sys/fs/protected_hardlinks").map(|s| s.trim() == "1").unwrap_or(false);
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(protected && root, "needs root and fs.protected_hardlinks = 1");
    let t = tempfile::tempdir().unwrap();
    let (input, out) = (t.path().join("in"), t.path().join("out"));
    mirror(&input);
    // The downloads belong to root, readable by all but writable by none other: nobody may
    // read them but, under protected_hardlinks, not link them.
    let chmod = |mode: &str, p: &Path| Command::new("chmod").args(["-R", mode]).arg(p).status().unwrap();
    chmod("a+rX,go-w", &input);
    chmod("a+rx", t.path());
    // The service user's own output folder (one open to everyone is refused or closed).
    fs::create_dir_all(&out).unwrap();
    assert!(Command::new("chown").args(["65534:65534"]).arg(&out).status().unwrap().success());
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_mimic-eye"))
        .env("MIMIC_EYE_LOG", "warn")
        .arg("build")
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert_eq!(err.matches("files are copied instead of linked").count(), 1, "warned once: {err}");
    assert!(err.contains("Operation not permitted"), "{err}");
    let s = summary(&out);
    let f = &s["files"];
    assert_eq!(f["linked"], 0, "{f}");
    assert!(f["link_failure"].as_str().unwrap().contains("Operation not permitted"), "{f}");
    assert_eq!(f["copied"].as_u64().unwrap() + f["written"].as_u64().unwrap(), copied_folder_files(&s), "{f}");
    assert!(f["copied_bytes"].as_u64().unwrap() > 0);
    assert!(sha256sum_check(&out).status.success());
}

/// A mirror built once with `files = "copy"`: (its folder, input, output, config), and the
/// first copied image of the output with its bytes.
fn copied_mirror() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf, PathBuf, Vec<u8>) {
    let t = tempfile::tempdir().unwrap();
    let (input, out) = (t.path().join("in"), t.path().join("out"));
    mirror(&input);
    let cfg = config(t.path(), &input, &out, "copy");
    run_ok(bin().arg("build").arg("--config").arg(&cfg));
    let placed = find(&out, ".jpg").unwrap();
    let bytes = fs::read(&placed).unwrap();
    (t, input, out, cfg, placed, bytes)
}

/// Builds `cfg` again, which must fail on `source`'s checksum and keep the copy `placed` as
/// `before`; the summary.
fn build_fails_on_checksum(cfg: &Path, out: &Path, source: &Path, placed: &Path, before: &[u8]) -> serde_json::Value {
    let o = bin().arg("build").arg("--config").arg(cfg).output().unwrap();
    assert!(!o.status.success(), "a copy that does not match its listing must fail the build");
    let s = summary(out);
    let failure = s["failed"]["copied files"].as_str().unwrap();
    assert!(failure.contains(MISMATCH) && failure.contains(&source.display().to_string()), "{failure}");
    assert_eq!(fs::read(placed).unwrap(), before, "the previous copy is kept");
    s
}

#[test]
fn a_copied_image_that_differs_from_its_sha256sums_line_keeps_its_previous_copy_and_fails() {
    let (_t, input, out, cfg, placed, before) = copied_mirror();
    let s = summary(&out);
    assert_eq!(s["datasets"]["mimic_cxr_jpg"]["sha256sums"], "verified");
    assert!(s["files"]["copied"].as_u64().unwrap() > 0);
    let source =
        find(&files(&input).join("mimic-cxr-jpg/2.0.0/files"), &placed.file_name().unwrap().to_string_lossy()).unwrap();
    let mut bytes = fs::read(&source).unwrap();
    bytes[0] ^= 1;
    fs::write(&source, bytes).unwrap();
    let s = build_fails_on_checksum(&cfg, &out, &source, &placed, &before);
    assert_eq!(s["datasets"]["mimic_cxr_jpg"]["sha256sums"], "mismatch");
    assert_eq!(s["datasets"]["mimic_cxr_jpg"]["mismatched"][0], source.display().to_string());
    assert_eq!(placed_total(&s), copied_folder_files(&s), "{}", s["files"]);
}

/// A copy kept from an earlier build is checked against the dataset's SHA256SUMS.txt as it
/// is now: a new listing that no longer matches the unchanged source (a corrected checksum
/// file, a damaged download noticed upstream) makes it copied again and checked, which fails
/// the build and keeps the previous copy.
#[test]
fn a_kept_copy_is_checked_against_a_changed_sha256sums_line() {
    let (_t, input, out, cfg, placed, before) = copied_mirror();
    let root = files(&input).join("mimic-cxr-jpg/2.0.0");
    let source = find(&root.join("files"), &placed.file_name().unwrap().to_string_lossy()).unwrap();
    let rel = source.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
    let sums_path = root.join("SHA256SUMS.txt");
    let sums = fs::read_to_string(&sums_path).unwrap();
    assert!(sums.contains(&format!(" {rel}\n")), "the image is listed");
    let other = sha256_hex(b"other bytes");
    let changed: String = sums
        .lines()
        .map(|l| if l.ends_with(&format!(" {rel}")) { format!("{other} {rel}\n") } else { format!("{l}\n") })
        .collect();
    fs::write(&sums_path, changed).unwrap();
    let s = build_fails_on_checksum(&cfg, &out, &source, &placed, &before);
    // Every other copy was left in place.
    assert_eq!(s["files"]["kept"], s["files"]["copied"].as_u64().unwrap() + s["files"]["written"].as_u64().unwrap());
}

/// A gzip of `csv` in two members: header and the first half of the rows, then the rest. The
/// first member alone is a valid gzip of a shorter table, which is what a download cut at a
/// member boundary looks like: only its hash tells that it is not complete.
fn two_members(csv: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let lines: Vec<usize> = csv.iter().enumerate().filter(|(_, &b)| b == b'\n').map(|(i, _)| i + 1).collect();
    let cut = lines[lines.len() / 2];
    let member = |bytes: &[u8]| {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(bytes).unwrap();
        gz.finish().unwrap()
    };
    (member(&csv[..cut]), member(&csv[cut..]))
}

#[test]
fn the_daemon_publishes_a_download_only_once_its_hash_matches() {
    let t = tempfile::tempdir().unwrap();
    let (input, out) = (t.path().join("in"), t.path().join("out"));
    mirror(&input);
    let port = free_port();
    let d = Daemon::start(&write_config(t.path(), &input, &out, port, ""), port);
    d.wait_idle(90);
    let before = tree(&out);
    let lab: Vec<PathBuf> = before.keys().filter(|k| k.ends_with("Hosp/labevents.csv")).cloned().collect();
    assert!(!lab.is_empty());

    // A new labevents is being downloaded: SHA256SUMS.txt lists the new file, and the first of
    // its two gzip members has arrived, a valid gzip that decodes to half the table.
    let table = files(&input).join("mimiciv/2.2/hosp/labevents.csv.gz");
    let new_csv = String::from_utf8(read_table(&table)).unwrap().replace("ROUTINE", "STAT").into_bytes();
    let (first, rest) = two_members(&new_csv);
    let whole = [first.clone(), rest.clone()].concat();
    let sums_path = files(&input).join("mimiciv/2.2/SHA256SUMS.txt");
    let sums: String = fs::read_to_string(&sums_path)
        .unwrap()
        .lines()
        .map(|l| match l.ends_with(" hosp/labevents.csv.gz") {
            true => format!("{}  hosp/labevents.csv.gz\n", sha256_hex(&whole)),
            false => format!("{l}\n"),
        })
        .collect();
    fs::write(&sums_path, sums).unwrap();
    fs::write(&table, &first).unwrap();
    let failures = failed_builds(&d);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while failed_builds(&d) == failures {
        assert!(std::time::Instant::now() < deadline, "no build ran on the partial download:\n{}", d.log_text());
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    d.wait_idle(60);
    let log = d.log_text();
    assert!(log.contains(MISMATCH), "the partial download was not refused for its hash:\n{log}");
    let partial = tree(&out);
    for k in &lab {
        assert_eq!(partial.get(k), before.get(k), "{} changed before the download was complete", k.display());
    }
    assert_eq!(summary(&out)["datasets"]["mimiciv"]["sha256sums"], "mismatch");

    // The rest arrives: the hash matches and the new table is published, every row of it.
    fs::OpenOptions::new().append(true).open(&table).unwrap().write_all(&rest).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while summary(&out)["datasets"]["mimiciv"]["sha256sums"] != "verified" {
        assert!(std::time::Instant::now() < deadline, "the complete download was not taken:\n{}", d.log_text());
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    d.wait_idle(60);
    let after = tree(&out);
    let (mut rows_before, mut rows_after) = (0, 0);
    for k in &lab {
        let (old, new) = (text(&before[k]), text(&after[k]));
        assert_eq!(new, old.replace("ROUTINE", "STAT"), "{}", k.display());
        (rows_before, rows_after) = (rows_before + old.lines().count(), rows_after + new.lines().count());
    }
    assert_eq!(rows_after, rows_before);
    assert!(summary(&out)["failed"].as_object().unwrap().is_empty());
    d.stop();
}

/// `mimic_eye_builds_total` summed over its `result="failure"` series.
fn failed_builds(d: &Daemon) -> f64 {
    let (_, body) = http_get(d.port, "/metrics").expect("metrics");
    body.lines()
        .filter(|l| l.starts_with("mimic_eye_builds_total{") && l.contains("result=\"failure\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// `decode --sha256` prints the SHA-256 of the file's own bytes (compressed for `.gz`), whether
/// the file is hashed where it is read (a small one) or on a hashing thread fed copies of the
/// bytes (a large one): the digest a download is checked with.
#[test]
fn the_digest_of_a_read_is_the_files_sha256_small_or_large() {
    let dir = tempfile::tempdir().unwrap();
    let large_gz = demo_data().join("hosp/labevents.csv.gz");
    let mut csv = Vec::new();
    flate2::read::MultiGzDecoder::new(fs::File::open(&large_gz).unwrap()).read_to_end(&mut csv).unwrap();
    let large_csv = dir.path().join("labevents.csv");
    fs::write(&large_csv, &csv).unwrap();
    let small_csv = dir.path().join("small.csv");
    fs::write(&small_csv, &csv[..4000]).unwrap();
    let small_gz = dir.path().join("small.csv.gz");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&csv[..4000]).unwrap();
    fs::write(&small_gz, gz.finish().unwrap()).unwrap();
    for table in [&large_gz, &large_csv, &small_csv, &small_gz] {
        let out = Command::new(env!("CARGO_BIN_EXE_mimic-eye"))
            .args(["decode", "--sha256", "--table"])
            .arg(table)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let bytes = fs::read(table).unwrap();
        assert_eq!(report["sha256"].as_str(), Some(sha256_hex(&bytes).as_str()), "{}", table.display());
        assert_eq!(report["input_bytes"].as_u64(), Some(bytes.len() as u64));
    }
}

/// The output's listing after rebuilds: one that changed nothing patches the summary's and
/// report's lines only (every other line as it was), one that changed a file walks the output
/// again; each time `sha256sum -c` checks the whole output.
#[test]
fn the_output_listing_stays_exact_across_rebuilds_that_change_nothing_or_something() {
    let tmp = tempfile::tempdir().unwrap();
    mirror(tmp.path());
    let (input, output) = (files(tmp.path()), tmp.path().join("out"));
    let lines = |output: &Path| -> Vec<String> {
        fs::read_to_string(output.join("SHA256SUMS.txt")).unwrap().lines().map(str::to_string).collect()
    };
    let checked = |output: &Path| {
        let check = sha256sum_check(output);
        assert!(check.status.success(), "{}", text(&check.stdout));
    };
    assert!(build_out(&input, &output, &[]).status.success());
    checked(&output);
    let first = lines(&output);
    let current = output.join(".mimic-eye/listing-current");
    assert!(current.exists(), "a walked listing is marked current");

    assert!(build_out(&input, &output, &[]).status.success());
    checked(&output);
    let again = lines(&output);
    let differ: Vec<&String> = again.iter().filter(|l| !first.contains(l)).collect();
    assert!(differ.iter().any(|l| l.ends_with(" summary.json")), "{differ:?}");
    assert!(
        differ.iter().all(|l| l.ends_with(" summary.json") || l.ends_with(" report.html")),
        "only the summary's and report's lines change: {differ:?}"
    );

    // One patient's admissions change: that file's line changes too.
    let adm = find(&input, "hosp/admissions.csv.gz").unwrap();
    let text_rows = String::from_utf8(read_table(&adm)).unwrap();
    let first_row = text_rows.lines().nth(1).unwrap();
    let changed = text_rows.replacen(first_row, &format!("{first_row}X"), 1);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(changed.as_bytes()).unwrap();
    fs::write(&adm, gz.finish().unwrap()).unwrap();
    let sums = adm.parent().unwrap().parent().unwrap().join("SHA256SUMS.txt");
    let _ = fs::remove_file(&sums); // this test changes the download on purpose
    assert!(build_out(&input, &output, &[]).status.success());
    checked(&output);
    let third = lines(&output);
    let differ: Vec<&String> = third.iter().filter(|l| !again.contains(l)).collect();
    assert!(differ.len() >= 2 && differ.iter().any(|l| l.ends_with("/Hosp/admissions.csv")), "{differ:?}");
}
