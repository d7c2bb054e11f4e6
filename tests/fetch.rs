//! `mimic-eye fetch` against a real HTTP server on loopback that behaves like PhysioNet's file
//! server (tests/common/physionet.rs): Basic auth, index pages, ranges, throttling and faults.
//! Every fault must end in a verified file or a named error, never a wrong file in place.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::physionet::{Fault, Options, PhysioNet};
use common::*;

struct Mirror {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    /// The mirror's `physionet.org/files`, as the server serves it.
    files: PathBuf,
    /// The folder `fetch` fills.
    input: PathBuf,
    home: PathBuf,
}

/// A synthetic PhysioNet mirror whose eye-tracking cohort holds a small part of the images
/// (`--cxr-bulk-patients`), and a home folder with a `.netrc` for the server.
fn mirror(bulk: &str) -> Mirror {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    synth(
        &root.join("src"),
        &["--patients", "4", "--others", "2", "--layout", "physionet", "--cxr-bulk-patients", bulk],
    );
    let files = root.join("src/physionet.org/files");
    let home = root.join("home");
    fs::create_dir_all(&home).unwrap();
    let netrc = home.join(".netrc");
    fs::write(&netrc, "machine 127.0.0.1 login user password secret\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&netrc, fs::Permissions::from_mode(0o600)).unwrap();
    Mirror { input: root.join("fetched"), files, home, root, _tmp: tmp }
}

impl Mirror {
    fn fetch_cmd(&self, server: &PhysioNet, args: &[&str]) -> Command {
        let mut cmd = bin();
        cmd.env("HOME", &self.home)
            .env("MIMIC_EYE_FETCH_BACKOFF_MS", "20")
            .env("MIMIC_EYE_FETCH_STALL_SECONDS", "1")
            .args(["fetch", "--url", &server.url(), "--input"])
            .arg(&self.input)
            .args(args);
        cmd
    }
    fn fetch(&self, server: &PhysioNet, args: &[&str]) -> Output {
        self.fetch_cmd(server, args).output().unwrap()
    }
    /// Every file of the served tree that has a copy in the fetched one: (relative path, equal).
    fn fetched_files(&self) -> BTreeMap<PathBuf, bool> {
        let mut out = BTreeMap::new();
        let mut stack = vec![self.input.clone()];
        while let Some(dir) = stack.pop() {
            for e in fs::read_dir(&dir).unwrap().flatten() {
                let rel = e.path().strip_prefix(&self.input).unwrap().to_path_buf();
                if rel.starts_with(".mimic-eye-fetch") {
                    continue;
                }
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    let same = fs::read(e.path()).ok() == fs::read(self.files.join(&rel)).ok();
                    out.insert(rel, same);
                }
            }
        }
        out
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// Bytes of every file below `dir`, wget's index pages aside.
fn bytes_below(dir: &Path) -> u64 {
    files_below(dir, |_| true).1
}

/// The files below `dir` that `keep` takes, and their bytes (index pages and fetch's record
/// aside).
fn files_below(dir: &Path, keep: impl Fn(&Path) -> bool) -> (u64, u64) {
    let (mut files, mut total) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            if e.file_name() == ".mimic-eye-fetch" {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else if e.file_name() != "index.html" && keep(&e.path()) {
                files += 1;
                total += e.metadata().unwrap().len();
            }
        }
    }
    (files, total)
}

#[test]
fn fetch_gets_exactly_the_cohort_and_then_build_equals_a_build_of_the_whole_mirror() {
    let m = mirror("60");
    let server = PhysioNet::start(&m.files, Options::default());
    let out = m.fetch(&server, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let fetched = m.fetched_files();
    assert!(fetched.values().all(|same| *same), "a fetched file differs from the server's");
    // No image of a patient outside the cohort was asked for (the bulk patients are p18…).
    let requested = server.paths_requested();
    let outside: Vec<&String> = requested.iter().filter(|p| p.contains("/files/p18/")).collect();
    assert!(outside.is_empty(), "{} files outside the cohort fetched, first {:?}", outside.len(), outside.first());
    let (got, whole) = (bytes_below(&m.input), bytes_below(&m.files));
    let jpg = |p: &Path| p.extension().is_some_and(|e| e == "jpg");
    let (images, mirror_images) = (files_below(&m.input, jpg).0, files_below(&m.files, jpg).0);
    println!(
        "fetched {got} of {whole} bytes ({:.1} %), {} of the mirror's files; images {images} of {mirror_images} ({:.1} %)",
        100.0 * got as f64 / whole as f64,
        fetched.len(),
        100.0 * images as f64 / mirror_images as f64
    );
    let planned = fs::read_to_string(m.input.join(".mimic-eye-fetch/planned.txt")).unwrap_or_default();
    assert_eq!(images as usize, planned.lines().filter(|l| l.ends_with(".jpg")).count(), "images fetched = planned");
    // The same output as a build of the whole mirror, file for file.
    let (a, b) = (m.root.join("out-fetched"), m.root.join("out-whole"));
    build(&m.input, &a, &[]);
    build(&m.files, &b, &[]);
    assert_eq!(tree(&a), tree(&b), "fetch then build differs from build on the whole mirror");
    // The fetched tree is partial by design: `inputs` says so and exits 0.
    let inputs = bin().args(["inputs", "--verify", "--input"]).arg(&m.input).output().unwrap();
    assert!(inputs.status.success(), "{}", stderr(&inputs));
    assert!(stdout(&inputs).contains("not fetched (outside the cohort)"), "{}", stdout(&inputs));
    // A rerun fetches nothing again; a larger cohort fetches only what is new.
    let before = server.bytes_sent();
    let again = m.fetch(&server, &[]);
    assert!(again.status.success() && stdout(&again).contains("fetched 0 file(s)"), "{}", stdout(&again));
    assert!(server.bytes_sent() - before < 1 << 16, "a rerun downloaded {} bytes", server.bytes_sent() - before);
    let gets = |p: &str| server.requests(p);
    let table = "mimic-cxr-jpg/2.0.0/mimic-cxr-2.0.0-metadata.csv.gz";
    let table_gets = gets(table);
    let wider = m.fetch(&server, &["--cohort", "cxr"]);
    assert!(wider.status.success(), "{}", stderr(&wider));
    assert_eq!(gets(table), table_gets, "a table fetched again for a larger cohort");
    assert!(
        server.paths_requested().iter().any(|p| p.contains("/files/p18/")),
        "the cxr cohort's images were not fetched"
    );
}

#[test]
fn faults_end_in_a_verified_file_and_a_wrong_password_in_a_named_error() {
    let m = mirror("0");
    let server = PhysioNet::start(&m.files, Options::default());
    let labs = "mimiciv/2.2/hosp/labevents.csv.gz";
    server.fault(labs, Fault::ResetMidBody { after: 1000 }, 1);
    server.fault("mimiciv/2.2/hosp/admissions.csv.gz", Fault::Unavailable { retry_after_secs: 1 }, 2);
    server.fault("mimiciv/2.2/hosp/patients.csv.gz", Fault::TooManyRequests { retry_after_secs: 1 }, 1);
    server.fault("mimic-iv-ed/2.2/ed/edstays.csv.gz", Fault::WrongBytes, 2);
    server.fault("mimiciv/2.2/icu/icustays.csv.gz", Fault::Stall { after: 100, secs: 3 }, 1);
    let out = m.fetch(&server, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(m.fetched_files().values().all(|same| *same), "a wrong file is in place");
    assert_eq!(server.faults_left(), 0, "a fault was not met");
    assert!(
        server.ranges(labs).iter().any(|r| r == "bytes=1000-"),
        "the reset file was not resumed: {:?}",
        server.ranges(labs)
    );
    assert!(server.requests("mimic-iv-ed/2.2/ed/edstays.csv.gz") >= 3, "wrong bytes were not fetched again");
    let summary = stdout(&out);
    assert!(summary.contains("resumed 2") || summary.contains("resumed 1"), "{summary}");
    // Nothing partial is left visible: only whole, verified files and the fetch's own record.
    let parts: Vec<PathBuf> =
        m.fetched_files().into_keys().filter(|p| p.to_string_lossy().ends_with(".part")).collect();
    assert!(parts.is_empty(), "{parts:?}");
    // A 401 ends the fetch at once with what to check; the password is never printed.
    let wrong = mirror("0");
    let strict = PhysioNet::start(&wrong.files, Options { password: "other".into(), ..Options::default() });
    let out = wrong.fetch(&strict, &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("401") && err.contains("refused the credentials"), "{err}");
    assert!(!err.contains("secret"), "the password leaked: {err}");
    assert!(!wrong.input.join("mimiciv").exists() || wrong.fetched_files().is_empty());
}

#[test]
fn credentials_come_from_a_private_netrc_or_user_and_environment() {
    let m = mirror("0");
    let server =
        PhysioNet::start(&m.files, Options { user: "alice".into(), password: "pw".into(), ..Options::default() });
    // A .netrc others can read is refused, naming the fix.
    let netrc = m.home.join(".netrc");
    fs::write(&netrc, "machine 127.0.0.1 login alice password pw\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&netrc, fs::Permissions::from_mode(0o644)).unwrap();
    let out = m.fetch(&server, &["--dry-run"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
    // --user with the password in the environment (never in argv).
    fs::remove_file(&netrc).unwrap();
    let list = m.root.join("urls.txt");
    let out = m
        .fetch_cmd(&server, &["--user", "alice", "--list", list.to_str().unwrap()])
        .env("MIMIC_EYE_PHYSIONET_PASSWORD", "pw")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let urls = fs::read_to_string(&list).unwrap();
    assert!(urls.lines().all(|u| u.starts_with(&server.url())), "{urls}");
    assert!(urls.contains("hosp/labevents.csv.gz") && urls.contains(".jpg"), "{urls}");
    assert!(stdout(&out).contains("plan:"), "{}", stdout(&out));
    // Each dataset's plan is set against its whole size: every listed file's bytes.
    let listing = fs::read_to_string(m.files.join("mimiciv/2.2/SHA256SUMS.txt")).unwrap();
    let whole: u64 = listing
        .lines()
        .map(|l| fs::metadata(m.files.join("mimiciv/2.2").join(l.split_once(' ').unwrap().1.trim())).unwrap().len())
        .sum();
    let line = stdout(&out).lines().find(|l| l.trim_start().starts_with("MIMIC-IV ")).unwrap_or_default().to_string();
    let expected = format!("of {:>9} listed files, {whole:>15} bytes", listing.lines().count());
    assert!(line.ends_with(&expected), "{line:?} should end with {expected:?}");
}

#[test]
fn a_fetch_killed_mid_file_resumes_by_range_and_ends_byte_identical() {
    let m = mirror("0");
    // One large table, throttled: the kill comes while it streams.
    let big = m.files.join("mimiciv/2.2/hosp/labevents.csv.gz");
    let mut bytes = fs::read(&big).unwrap();
    while bytes.len() < 3 << 20 {
        let copy = bytes.clone();
        bytes.extend_from_slice(&copy);
    }
    fs::write(&big, &bytes).unwrap();
    let sums = m.files.join("mimiciv/2.2/SHA256SUMS.txt");
    let digest = {
        use sha2::Digest;
        mimic_eye::hex(&sha2::Sha256::digest(&bytes).into())
    };
    let text: String = fs::read_to_string(&sums)
        .unwrap()
        .lines()
        .map(|l| {
            if l.ends_with("hosp/labevents.csv.gz") {
                format!("{digest} hosp/labevents.csv.gz\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    fs::write(&sums, text).unwrap();
    let server =
        PhysioNet::start(&m.files, Options { bytes_per_second_per_connection: Some(1 << 20), ..Options::default() });
    let mut child = m.fetch_cmd(&server, &[]).spawn().unwrap();
    let part = m.input.join("mimiciv/2.2/hosp/.labevents.csv.gz.part");
    let deadline = Instant::now() + Duration::from_secs(60);
    while fs::metadata(&part).map_or(0, |p| p.len()) < 1 << 20 {
        assert!(Instant::now() < deadline, "the big file never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let done_before: Vec<(String, u64)> = server
        .paths_requested()
        .into_iter()
        .filter(|p| !p.ends_with("labevents.csv.gz"))
        .map(|p| (p.clone(), server.requests(&p)))
        .collect();
    assert!(!m.input.join("mimiciv/2.2/hosp/labevents.csv.gz").exists(), "a partial file is in place");
    server.throttle(None);
    let out = m.fetch(&server, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ranges = server.ranges("mimiciv/2.2/hosp/labevents.csv.gz");
    assert!(ranges.iter().any(|r| r.starts_with("bytes=") && r != "bytes=0-"), "not resumed by Range: {ranges:?}");
    for (path, gets) in done_before {
        let whole = m.input.join(&path);
        if whole.is_file() {
            assert_eq!(server.requests(&path), gets, "{path} was completed before the kill and fetched again");
        }
    }
    assert!(m.fetched_files().values().all(|same| *same), "the resumed tree differs from the server's");
    assert_eq!(fs::read(m.input.join("mimiciv/2.2/hosp/labevents.csv.gz")).unwrap(), bytes);
}

/// Zips MIMIC-CXR's `files/` tree into `mimic-cxr-reports.zip` beside it (entries under
/// `files/`, or without the prefix), listed in its SHA256SUMS.txt; returns the zip's path.
fn zip_reports(version: &Path, prefix: &str) -> PathBuf {
    use std::io::Write;
    let zip_path = version.join("mimic-cxr-reports.zip");
    let mut zip = zip::ZipWriter::new(fs::File::create(&zip_path).unwrap());
    let mut stack = vec![version.join("files")];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else if e.path().extension().is_some_and(|x| x == "txt") {
                let rel = e.path().strip_prefix(version.join("files")).unwrap().to_string_lossy().into_owned();
                let options =
                    zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
                zip.start_file(format!("{prefix}{rel}"), options).unwrap();
                zip.write_all(&fs::read(e.path()).unwrap()).unwrap();
            }
        }
    }
    zip.finish().unwrap();
    let digest = {
        use sha2::Digest;
        mimic_eye::hex(&sha2::Sha256::digest(fs::read(&zip_path).unwrap()).into())
    };
    let sums = version.join("SHA256SUMS.txt");
    let mut text = fs::read_to_string(&sums).unwrap();
    text.push_str(&format!("{digest} mimic-cxr-reports.zip\n"));
    fs::write(&sums, text).unwrap();
    zip_path
}

#[test]
fn reports_are_read_from_the_zip_without_unpacking_and_fetched_as_the_zip_when_fewer_bytes() {
    let m = mirror("40");
    let version = m.files.join("mimic-cxr/2.0.0");
    let whole = m.root.join("out-tree");
    build(&m.files, &whole, &[]);
    // The same mirror with the zip instead of the tree, entries with and without `files/`.
    for prefix in ["files/", ""] {
        let zipped = m.root.join(format!("zipped{}", prefix.len()));
        copy_tree(&m.files, &zipped);
        let v = zipped.join("mimic-cxr/2.0.0");
        fs::remove_file(v.join("mimic-cxr-reports.zip")).ok();
        zip_reports(&v, prefix);
        fs::remove_dir_all(v.join("files")).unwrap();
        let out = m.root.join(format!("out-zip{}", prefix.len()));
        build(&zipped, &out, &[]);
        assert_eq!(tree(&out), tree(&whole), "reports from the zip (prefix {prefix:?}) differ from the tree's");
        let inputs = bin().args(["inputs", "--input"]).arg(&zipped).output().unwrap();
        assert!(stdout(&inputs).contains("reports: mimic-cxr-reports.zip"), "{}", stdout(&inputs));
        // A zip whose bytes differ from its listing fails the reports, keeping their copies.
        fs::OpenOptions::new().append(true).open(v.join("mimic-cxr-reports.zip")).unwrap().set_len(100).unwrap();
        let bad = bin().arg("build").arg("--input").arg(&zipped).arg("--output").arg(&out).output().unwrap();
        assert!(!bad.status.success());
        assert!(stderr(&bad).contains("mimic-cxr-reports.zip"), "{}", stderr(&bad));
        assert_eq!(tree(&out), tree(&whole), "a damaged zip changed the output");
    }
    // fetch: the eye-tracking cohort's few reports one by one; every CXR patient's by the zip.
    zip_reports(&version, "files/");
    let server = PhysioNet::start(&m.files, Options::default());
    let out = m.fetch(&server, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("MIMIC-CXR reports: one file per study"), "{}", stdout(&out));
    assert_eq!(server.requests("mimic-cxr/2.0.0/mimic-cxr-reports.zip"), 0);
    let out = m.fetch(&server, &["--cohort", "cxr"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("MIMIC-CXR reports: mimic-cxr-reports.zip"), "{}", stdout(&out));
    assert_eq!(server.requests("mimic-cxr/2.0.0/mimic-cxr-reports.zip"), 1);
    // The zip holds every report, the tree only the first cohort's: the build reads the zip.
    let (a, b) = (m.root.join("out-fetched-cxr"), m.root.join("out-whole-cxr"));
    build(&m.input, &a, &["--cohort", "cxr"]);
    build(&m.files, &b, &["--cohort", "cxr"]);
    assert_eq!(tree(&a), tree(&b), "the cxr cohort fetched with the zip builds otherwise than the whole mirror");
}

fn copy_tree(from: &Path, to: &Path) {
    let status = Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(status.success());
}

/// Adds `count` files of `size` bytes to EyeGaze's listing (fetched whole), named `name_i.bin`.
fn add_listed_files(m: &Mirror, name: &str, count: usize, size: u64) {
    use sha2::Digest;
    let version = m.files.join("egd-cxr/1.0.0");
    let mut lines = String::new();
    for i in 0..count {
        let rel = format!("bench/{name}_{i}.bin");
        fs::create_dir_all(version.join("bench")).unwrap();
        let f = fs::File::create(version.join(&rel)).unwrap();
        f.set_len(size).unwrap(); // sparse: zeros, no disk
        let mut hasher = sha2::Sha256::new();
        let zeros = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            hasher.update(&zeros[..n]);
            left -= n as u64;
        }
        lines.push_str(&format!("{} {rel}\n", mimic_eye::hex(&hasher.finalize().into())));
    }
    let sums = version.join("SHA256SUMS.txt");
    let mut text = fs::read_to_string(&sums).unwrap();
    text.push_str(&lines);
    fs::write(&sums, text).unwrap();
}

#[test]
#[ignore = "benchmark (about a minute, 4 GB of sparse files): cargo test --release --test fetch -- --ignored --nocapture"]
fn benchmark_throughput_per_connection_and_memory_with_a_2_gb_file() {
    let m = mirror("0");
    let server = PhysioNet::start(&m.files, Options::default());
    assert!(m.fetch(&server, &[]).status.success());
    // Throughput: each connection throttled to R; 2 files of S per connection.
    let (rate, size) = (2u64 << 20, 4u64 << 20);
    server.throttle(Some(rate));
    for n in [1usize, 4, 16] {
        add_listed_files(&m, &format!("n{n}"), 2 * n, size);
        // A published listing is never fetched again: this one changed, so it goes.
        fs::remove_file(m.input.join("egd-cxr/1.0.0/SHA256SUMS.txt")).unwrap();
        let started = Instant::now();
        let out = m.fetch(&server, &["--connections", &n.to_string()]);
        let secs = started.elapsed().as_secs_f64();
        assert!(out.status.success(), "{}", stderr(&out));
        // The listing and the 2·N files.
        assert!(stdout(&out).contains(&format!("fetched {} file(s)", 2 * n + 1)), "{}", stdout(&out));
        let got = (2 * n) as f64 * size as f64 / secs;
        println!(
            "N = {n:2}: {:.1} MB in {secs:.2} s = {:.2} MB/s; N·R = {:.2} MB/s; {:.2} of N·R (target ≥ 0.85)",
            (2 * n) as f64 * size as f64 / 1e6,
            got / 1e6,
            (n as u64 * rate) as f64 / 1e6,
            got / (n as u64 * rate) as f64
        );
    }
    // Memory: a 2 GB file, unthrottled, under /usr/bin/time.
    server.throttle(None);
    add_listed_files(&m, "big", 1, 2 << 30);
    fs::remove_file(m.input.join("egd-cxr/1.0.0/SHA256SUMS.txt")).unwrap();
    let started = Instant::now();
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%M"])
        .arg(env!("CARGO_BIN_EXE_mimic-eye"))
        .env("HOME", &m.home)
        .env("MIMIC_EYE_LOG", "warn")
        .args(["fetch", "--url", &server.url(), "--input"])
        .arg(&m.input)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("fetched 2 file(s)"), "{}", stdout(&out)); // the listing and the file
    let kib: u64 = stderr(&out).lines().last().unwrap().trim().parse().unwrap();
    println!(
        "a 2 GiB file fetched and verified in {:.1} s, peak RSS {:.1} MiB (target ≤ 64)",
        started.elapsed().as_secs_f64(),
        kib as f64 / 1024.0
    );
}
