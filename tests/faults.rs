//! Fault and crash matrices: the real binary runs under strace, which makes its N-th call of a
//! class fail with EIO (as SQLite's I/O error tests do) or kills it there (as ALICE and
//! CrashMonkey do), for N = 1, 2, 3… until no call is left. After every run the output holds
//! only whole old (A) or new (B) files, loses nothing, and a plain rerun makes it B again.
//! strace counts `when` per thread: each thread's N-th call is hit, often several in one run.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;

type Tree = BTreeMap<PathBuf, Vec<u8>>;

/// The fault classes: syscalls that fail together, and whether every N is tried (the
/// classes with hundreds of calls per thread take a growing stride instead).
const FAULT_CLASSES: [(&str, bool); 7] = [
    ("openat", false),
    ("write", false),
    ("fsync,fdatasync,syncfs", true),
    ("rename,renameat,renameat2", true),
    ("link,linkat", true),
    ("unlink,unlinkat", true),
    ("mkdir,mkdirat", true),
];

/// The persistence points a crash is injected at: all together, then each group alone (strace
/// counts per thread and the first thread to reach its N-th call dies, so together they miss
/// the late calls of the other threads).
const CRASH_CLASSES: [&str; 4] = [
    "rename,renameat,renameat2,link,linkat,fsync,fdatasync,syncfs",
    "rename,renameat,renameat2",
    "link,linkat",
    "fsync,fdatasync,syncfs",
];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Scenario {
    /// B built into an output that does not exist yet.
    FirstBuild,
    /// B built over a copy of A's output.
    Rebuild,
}

/// Inputs A and B, A's built output, and the trees of clean builds of A and of B.
struct World {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    input_b: PathBuf,
    built_a: PathBuf,
    a: Tree,
    b: Tree,
}

fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let (input_a, input_b) = (root.join("in-a"), root.join("in-b"));
    synth(&input_a, &["--patients", "3", "--others", "2", "--rows-per-patient", "3", "--plain"]);
    run_ok(Command::new("cp").arg("-a").arg(&input_a).arg(&input_b));
    // B: two more lab rows of a cohort patient (a copy of the first data row: the last one is a
    // planted malformed row, which only reaches the rejects), transfers removed (its files are
    // deleted), one ED stay's disposition and one triage complaint changed (files rewritten).
    edit(&input_b.join("mimiciv/hosp/labevents.csv"), |lines| {
        let row = lines[1].clone();
        lines.extend([row.clone(), row]);
    });
    fs::remove_file(input_b.join("mimiciv/hosp/transfers.csv")).unwrap();
    edit(&input_b.join("mimic-iv-ed/ed/edstays.csv"), |lines| lines[3] = lines[3].replace(",ADMITTED", ",HOME"));
    edit(&input_b.join("mimic-iv-ed/ed/triage.csv"), |lines| {
        lines[1] = lines[1].replace("\"Abdominal distention, SOB\"", "Chest pain");
    });
    let (built_a, built_b) = (root.join("built-a"), root.join("built-b"));
    build(&input_a, &built_a, &[]);
    build(&input_b, &built_b, &[]);
    let (a, b) = (tree(&built_a), tree(&built_b));
    let changed = a.iter().filter(|(p, bytes)| b.get(*p).is_some_and(|x| x != *bytes)).count();
    let removed = a.keys().filter(|p| !b.contains_key(*p)).count();
    assert!(changed >= 3 && removed >= 3, "B changes too little: {changed} changed, {removed} removed");
    World { _tmp: tmp, root, input_b, built_a, a, b }
}

/// Rewrites a text file line by line; the edit must change it.
fn edit(path: &Path, f: impl FnOnce(&mut Vec<String>)) {
    let text = fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    f(&mut lines);
    let new = lines.join("\n") + "\n";
    assert_ne!(new, text, "{} unchanged", path.display());
    fs::write(path, new).unwrap();
}

/// The output's files, none when the output folder was never made.
fn tree_of(out: &Path) -> Tree {
    if out.exists() {
        tree(out)
    } else {
        Tree::new()
    }
}

/// What a traced run did: its exit (`None`: hung and killed), its last stderr line, and the
/// calls strace failed or killed at, one line each (`-ff` keeps a thread's calls whole).
struct Run {
    status: Option<ExitStatus>,
    last: String,
    injected: Vec<String>,
    killed: bool,
}

impl Run {
    /// An injection off the program's file I/O: a write to an eventfd (tokio's waker), a pipe
    /// or a socket (none fails with EIO in reality, and tokio panics by design when its waker
    /// fails: the process aborts, or hangs), or to the program's own stdout or stderr (where
    /// std's `eprintln!` panics). Check 1 means nothing for such a run; checks 2 to 4 still
    /// judge it, as a crash.
    fn off_files(&self) -> bool {
        let off = ["<anon_inode:", "<pipe:", "<socket:", "</dev/", "write(1<", "write(2<"];
        self.injected.iter().any(|l| off.iter().any(|k| l.contains(k)))
    }
    /// Only the dynamic loader was hit (N of openat small: ld.so.cache, libc…); the program
    /// itself never saw an error, so a loader failure is strace's exec, not the program's.
    fn loader_only(&self) -> bool {
        self.injected.iter().all(|l| l.contains("/etc/ld.so.cache") || l.contains(".so."))
    }
}

/// Builds B into `out` under strace, `action` (`error=EIO`, `signal=KILL`) at each thread's
/// `n`-th call of `class`. A run still going after 20 s (a normal one takes a second) is
/// killed by its process id and reported as hung.
fn traced(w: &World, out: &Path, class: &str, action: &str, n: u32) -> Run {
    let logs = w.root.join("strace");
    let _ = fs::remove_dir_all(&logs);
    fs::create_dir(&logs).unwrap();
    let stderr = w.root.join("stderr");
    let mut strace = Command::new("strace");
    strace.args(["-ff", "-qq", "-y", "-o"]).arg(logs.join("log"));
    // strace 6.1 delivers no injected signal under --seccomp-bpf (the run just succeeds), so
    // only error injection gets its speed (4x: only the traced calls stop).
    if !action.starts_with("signal") {
        strace.arg("--seccomp-bpf");
    }
    let mut child = strace
        .args(["-e", &format!("trace={class}"), "-e", &format!("inject={class}:{action}:when={n}")])
        .arg(env!("CARGO_BIN_EXE_mimic-eye"))
        .args(["build", "--input"])
        .arg(&w.input_b)
        .arg("--output")
        .arg(out)
        .env("MIMIC_EYE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("strace runs (install it with .ci/install-tools)");
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let hung = child.try_wait().unwrap().is_none();
    if hung {
        // The traced build is strace's child: killed by its process id (strace then ends).
        let children = fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id())).unwrap_or_default();
        for pid in children.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            // SAFETY: sends a signal to a process this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let status = child.wait().unwrap();
    let text: String = fs::read_dir(&logs).unwrap().flatten().map(|e| fs::read_to_string(e.path()).unwrap()).collect();
    // A killed call shows no `(INJECTED)`: it never returns (`= ?`).
    let killed = text.contains("+++ killed by SIGKILL +++");
    let injected = text.lines().filter(|l| l.contains("(INJECTED)") || (killed && l.ends_with("= ?")));
    Run {
        status: (!hung).then_some(status),
        last: last_line(&fs::read(&stderr).unwrap()),
        injected: injected.map(str::to_string).collect(),
        killed,
    }
}

fn last_line(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr).lines().last().unwrap_or("").to_string()
}

/// A fresh output for a run: none for a first build, a copy of A's for a rebuild.
fn fresh_output(w: &World, scenario: Scenario) -> PathBuf {
    let out = w.root.join("out");
    let _ = fs::remove_dir_all(&out);
    if scenario == Scenario::Rebuild {
        run_ok(Command::new("cp").arg("-a").arg(&w.built_a).arg(&out));
    }
    out
}

/// Check 2 (every file is A's or B's version; B's only after a first build) and check 3 (no
/// file of both A and B lost in a rebuild). A `.tmp*` file is an atomic write's temporary left
/// by a failed unlink: allowed here, and the rerun must remove it (check 4).
fn check_files(w: &World, scenario: Scenario, out: &Path) -> Vec<(&'static str, String)> {
    let got = tree_of(out);
    let len = |v: Option<&Vec<u8>>| v.map_or("none".to_string(), |v| v.len().to_string());
    let mixed = got.iter().filter(|(path, bytes)| {
        let ok = w.b.get(*path) == Some(*bytes) || (scenario == Scenario::Rebuild && w.a.get(*path) == Some(*bytes));
        !ok && !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".tmp"))
    });
    let mixed = mixed
        .map(|(p, b)| format!("{} ({} bytes, A's {}, B's {})", p.display(), b.len(), len(w.a.get(p)), len(w.b.get(p))));
    let mut bad = vec![("2 files neither A's nor B's", listing(mixed))];
    if scenario == Scenario::Rebuild {
        let lost = w.a.keys().filter(|p| w.b.contains_key(*p) && !got.contains_key(*p));
        bad.push(("3 files of A and B lost", listing(lost.map(|p| p.display().to_string()))));
    }
    bad.retain(|(_, detail)| !detail.is_empty());
    bad
}

/// How many items and the first three, or nothing.
fn listing(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    match items.len() {
        0 => String::new(),
        n => format!("{n}: {}{}", items[..n.min(3)].join(", "), if n > 3 { ", …" } else { "" }),
    }
}

/// The paths where `got` differs from B's tree (missing, extra or other bytes).
fn differ_from_b(w: &World, got: &Tree) -> String {
    listing(
        got.keys()
            .chain(w.b.keys().filter(|p| !got.contains_key(*p)))
            .filter(|p| got.get(*p) != w.b.get(*p))
            .map(|p| format!("{} ({})", p.display(), if got.contains_key(p) { "differs" } else { "missing" })),
    )
}

/// Check 4: a plain rerun exits 0, leaves B's tree, and `verify` passes.
fn check_rerun(w: &World, out: &Path) -> Option<(&'static str, String)> {
    let rerun = bin().arg("build").arg("--input").arg(&w.input_b).arg("--output").arg(out).output().unwrap();
    if !rerun.status.success() {
        return Some(("4 rerun failed", last_line(&rerun.stderr)));
    }
    let got = tree_of(out);
    if got != w.b {
        return Some(("4 rerun's tree is not B's", differ_from_b(w, &got)));
    }
    let verify = bin().arg("verify").arg("--output").arg(out).output().unwrap();
    if !verify.status.success() {
        let text = String::from_utf8_lossy(&verify.stdout).to_string() + &String::from_utf8_lossy(&verify.stderr);
        return Some(("4 verify failed", text.trim().replace('\n', " | ")));
    }
    None
}

/// Run counts of one class by outcome.
#[derive(Default)]
struct Tally {
    injected: u32,
    failed_naming_path: u32,
    succeeded: u32,
    off_files: u32,
    loader: u32,
    killed: u32,
    hung: u32,
}

/// The failures of a matrix, each with its scenario, class and N.
#[derive(Default)]
struct Report {
    failures: Vec<String>,
    table: Vec<(String, Tally)>,
}

impl Report {
    fn fail(&mut self, scenario: Scenario, class: &str, n: u32, check: &str, detail: &str) {
        self.failures.push(format!("{scenario:?} {class} N={n}: check {check}: {detail}"));
    }

    /// Prints the run counts and every failure, then asserts there is none.
    fn finish(self, title: &str, started: Instant) {
        println!("{title} ({:.0} s)", started.elapsed().as_secs_f64());
        println!(
            "  {:<62} {:>8} {:>10} {:>9} {:>9} {:>6} {:>6} {:>4}",
            "class", "injected", "named path", "succeeded", "off-files", "loader", "killed", "hung"
        );
        for (class, t) in &self.table {
            println!(
                "  {class:<62} {:>8} {:>10} {:>9} {:>9} {:>6} {:>6} {:>4}",
                t.injected, t.failed_naming_path, t.succeeded, t.off_files, t.loader, t.killed, t.hung
            );
        }
        for f in &self.failures {
            println!("  FAIL {f}");
        }
        assert!(self.failures.is_empty(), "{title}: {} failures:\n{}", self.failures.len(), self.failures.join("\n"));
    }
}

/// The next N: every one, or a stride growing by an eighth (1…16, 18, 20, 22, 24, 27, 30, 33…).
fn next(n: u32, every: bool) -> u32 {
    if every {
        n + 1
    } else {
        n + (n / 8).max(1)
    }
}

/// Runs one class under `action` for N = 1, 2… until a run injects nothing; `crash` runs are
/// killed, so check 1 (exit and message) applies to fault runs only.
fn run_class(w: &World, scenario: Scenario, class: &str, action: &str, every: bool, report: &mut Report) {
    let crash = action.starts_with("signal");
    let mut t = Tally::default();
    let mut n = 1;
    loop {
        let out = fresh_output(w, scenario);
        let run = traced(w, &out, class, action, n);
        if run.injected.is_empty() && !run.killed {
            break;
        }
        t.injected += 1;
        let (last, calls) = (&run.last, run.injected.join(" ; "));
        match run.status {
            None if run.off_files() => t.hung += 1,
            None => report.fail(scenario, class, n, "1 hung", &calls),
            Some(_) if crash => t.killed += u32::from(run.killed),
            Some(_) if run.off_files() => t.off_files += 1,
            Some(s) if s.success() => {
                t.succeeded += 1;
                let got = tree_of(&out);
                if got != w.b {
                    let detail = format!("{} after {calls}", differ_from_b(w, &got));
                    report.fail(scenario, class, n, "1 exit 0 but not B's tree", &detail);
                }
            }
            Some(_) if last.starts_with("mimic-eye: ") && last.contains('/') => t.failed_naming_path += 1,
            Some(_) if run.loader_only() => t.loader += 1,
            Some(s) => report.fail(scenario, class, n, "1 failed naming no path", &format!("{s}, {last:?}, {calls}")),
        }
        for (check, detail) in check_files(w, scenario, &out) {
            report.fail(scenario, class, n, check, &format!("{detail}; stderr {last:?}; after {calls}"));
        }
        if let Some((check, detail)) = check_rerun(w, &out) {
            report.fail(scenario, class, n, check, &detail);
        }
        n = next(n, every);
    }
    report.table.push((class.to_string(), t));
}

fn fault_matrix(scenario: Scenario) {
    let started = Instant::now();
    let w = world();
    let mut report = Report::default();
    for (class, every) in FAULT_CLASSES {
        run_class(&w, scenario, class, "error=EIO", every, &mut report);
    }
    report.finish(&format!("fault matrix, {scenario:?} of B"), started);
}

/// An EIO at every I/O call of a first build: the build fails naming a path or ends right,
/// leaves only B's files, and a plain rerun completes it.
#[test]
#[ignore = "needs strace: .ci/install-tools"]
fn an_io_error_anywhere_in_a_first_build_leaves_only_whole_new_files() {
    fault_matrix(Scenario::FirstBuild);
}

/// An EIO at every I/O call of a rebuild A→B: the build fails naming a path or ends right,
/// every file is A's or B's, none of both is lost, and a plain rerun completes it.
#[test]
#[ignore = "needs strace: .ci/install-tools"]
fn an_io_error_anywhere_in_a_rebuild_leaves_old_or_new_files_and_loses_none() {
    fault_matrix(Scenario::Rebuild);
}

/// A kill at every persistence point (rename, link, fsync) of a rebuild A→B: every file is
/// A's or B's, none of both is lost, and a plain rerun recovers to B.
#[test]
#[ignore = "needs strace: .ci/install-tools"]
fn a_crash_at_any_persistence_point_of_a_rebuild_is_recovered() {
    let started = Instant::now();
    let w = world();
    let mut report = Report::default();
    for class in CRASH_CLASSES {
        run_class(&w, Scenario::Rebuild, class, "signal=KILL", true, &mut report);
    }
    report.finish("crash matrix, Rebuild of A to B", started);
}
