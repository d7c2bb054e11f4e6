//! The unit as shipped, under a real systemd as PID 1: `systemd-nspawn` boots the host's own
//! /usr (Debian's systemd-container, `.ci/install-tools`) in a volatile container, and the test
//! drives it with `nsenter … systemctl`. The unit file and the config are installed byte for byte
//! as shipped: the binary is bound onto the container's /usr/local/bin, the synthetic downloads
//! and the output onto its /srv, so ExecStart=, ReadOnlyPaths=/srv/physionet,
//! ReadWritePaths=/srv/mimic-eye and metrics_addr 127.0.0.1:9898 (SocketBindAllow=tcp:9898) all
//! stay as they are. The container has a network namespace of its own (--private-network), so
//! port 9898 clashes with nothing on the host.
//!
//! Needs root, systemd-nspawn and cgroups: the test is ignored by a plain `cargo test` (said as
//! such, with the reason), and CI runs it with `--ignored`, where a machine that cannot run it is
//! a failure, never a pass.

mod common;

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const BOOT_TIMEOUT: Duration = Duration::from_secs(30);

fn on_path(name: &str) -> bool {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain(std::env::split_paths(PATH))
        .any(|d| d.join(name).is_file())
}

/// Why nspawn cannot run on this machine, if it cannot.
fn cannot_run() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: systemd-nspawn needs root".into());
    }
    if !on_path("systemd-nspawn") {
        return Some("systemd-nspawn is not installed (Debian's systemd-container: .ci/install-tools)".into());
    }
    if !on_path("nsenter") {
        return Some("nsenter is not installed (util-linux)".into());
    }
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if !mounts.lines().any(|l| matches!(l.split(' ').nth(2), Some("cgroup" | "cgroup2"))) {
        return Some("no cgroup file system is mounted".into());
    }
    if !Path::new("/usr/lib/systemd/systemd").is_file() {
        return Some("the host's /usr has no systemd to boot".into());
    }
    None
}

/// Runs a command to its end, killing it after `timeout`: its output, or None on the timeout.
fn run_for(cmd: &mut Command, timeout: Duration) -> Option<Output> {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().ok()?;
    let deadline = Instant::now() + timeout;
    while child.try_wait().ok()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().ok()
}

/// A booted container: systemd-nspawn and the container's PID 1 (`leader`, as the host sees it).
/// Dropping it powers the container off, or kills it; the mounts it needs live in a mount
/// namespace of nspawn's own, so they go with it, and the folder is removed last.
struct Container {
    nspawn: Child,
    leader: u32,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl Container {
    /// Boots a volatile container (an empty root on tmpfs, the host's /usr read only) with
    /// `binds` (nspawn's --bind/--bind-ro arguments). Err: why it did not boot.
    fn boot(binds: &[String]) -> Result<Container, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("usr")).map_err(|e| e.to_string())?;
        let log = dir.path().join("nspawn.log");
        let file = fs::File::create(&log).map_err(|e| e.to_string())?;

        // In the child, before nspawn runs: a private mount namespace in which /usr is bound
        // read-only into the empty root (nspawn wants an OS tree to look at, and --volatile=yes
        // then takes only its /usr) and /run is a tmpfs (it is not one here, and nspawn keeps
        // its propagation folder /run/systemd/nspawn on it). Nothing is mounted on the host.
        // The parent's death (the test killed) makes nspawn shut the container down.
        let c = |s: &str| CString::new(s).unwrap();
        let (usr, root_usr, run, tmpfs, mode) = (
            c("/usr"),
            CString::new(root.join("usr").into_os_string().into_encoded_bytes()).unwrap(),
            c("/run"),
            c("tmpfs"),
            c("mode=755"),
        );
        let slash = c("/");
        let mut cmd = Command::new("systemd-nspawn");
        cmd.env("PATH", PATH)
            .arg("-D")
            .arg(&root)
            .args(["--volatile=yes", "--private-network", "--register=no", "--keep-unit", "--console=pipe"])
            .args(binds)
            .arg("-b")
            .stdin(Stdio::null())
            .stdout(file.try_clone().map_err(|e| e.to_string())?)
            .stderr(file);
        // SAFETY: only async-signal-safe system calls between fork and exec, on CStrings made
        // before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let check = |r: libc::c_int| if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
                check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong))?;
                check(libc::unshare(libc::CLONE_NEWNS))?;
                let null = std::ptr::null();
                check(libc::mount(null, slash.as_ptr(), null, libc::MS_REC | libc::MS_PRIVATE, null as _))?;
                check(libc::mount(usr.as_ptr(), root_usr.as_ptr(), null, libc::MS_BIND | libc::MS_REC, null as _))?;
                check(libc::mount(
                    null,
                    root_usr.as_ptr(),
                    null,
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                    null as _,
                ))?;
                check(libc::mount(
                    tmpfs.as_ptr(),
                    run.as_ptr(),
                    tmpfs.as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    mode.as_ptr() as _,
                ))
            });
        }
        let nspawn = cmd.spawn().map_err(|e| format!("systemd-nspawn does not start: {e}"))?;
        let mut container = Container { nspawn, leader: 0, log, dir };

        // PID 1 of the container is nspawn's child running systemd.
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let nspawn_pid = container.nspawn.id();
        while container.leader == 0 {
            if let Ok(Some(status)) = container.nspawn.try_wait() {
                return Err(format!("systemd-nspawn exited with {status}:\n{}", container.log_text()));
            }
            if Instant::now() > deadline {
                return Err(format!("no systemd under systemd-nspawn in {BOOT_TIMEOUT:?}:\n{}", container.log_text()));
            }
            container.leader = children(nspawn_pid)
                .into_iter()
                .find(|&p| fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "systemd"))
                .unwrap_or(0);
            std::thread::sleep(Duration::from_millis(50));
        }
        // Booted: running, or degraded by some unit of the host's (its /etc is empty, so every
        // preset unit of the host's /usr is enabled and some fail without their setup).
        // systemctl talks to it on /run/systemd/private, which it makes early in its start-up.
        let private = PathBuf::from(format!("/proc/{}/root/run/systemd/private", container.leader));
        while !private.exists() {
            if Instant::now() > deadline || matches!(container.nspawn.try_wait(), Ok(Some(_))) {
                return Err(format!("the container's systemd made no {private:?}:\n{}", container.log_text()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let state = container.run_for(&["systemctl", "is-system-running", "--wait"], left);
        match state {
            Some(o) if matches!(String::from_utf8_lossy(&o.stdout).trim(), "running" | "degraded") => Ok(container),
            Some(o) => Err(format!(
                "the container's systemd is {:?} after boot ({}: {}):\n{}",
                String::from_utf8_lossy(&o.stdout).trim(),
                o.status,
                String::from_utf8_lossy(&o.stderr).trim(),
                container.log_text()
            )),
            None => Err(format!("the container did not boot in {BOOT_TIMEOUT:?}:\n{}", container.log_text())),
        }
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A command inside the container (all its namespaces), with a timeout.
    fn run_for(&self, args: &[&str], timeout: Duration) -> Option<Output> {
        let mut cmd = Command::new("nsenter");
        cmd.env("PATH", PATH).arg("-t").arg(self.leader.to_string()).arg("-a").arg("--").args(args);
        run_for(&mut cmd, timeout)
    }

    /// A command inside the container that must succeed within 30 s: its stdout.
    fn run(&self, args: &[&str]) -> String {
        let out = self.run_for(args, Duration::from_secs(30)).unwrap_or_else(|| panic!("{args:?} timed out"));
        assert!(
            out.status.success(),
            "{args:?} in the container: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A file in the container's (volatile) root, written from the host.
    fn write(&self, path: &str, text: &str) {
        let host = PathBuf::from(format!("/proc/{}/root{path}", self.leader));
        fs::create_dir_all(host.parent().unwrap()).unwrap();
        fs::write(&host, text).unwrap();
    }

    fn show(&self, unit: &str, property: &str) -> String {
        self.run(&["systemctl", "show", "--value", "-p", property, unit]).trim().to_string()
    }

    fn journal(&self, unit: &str) -> String {
        self.run(&["journalctl", "--no-pager", "-o", "cat", &format!("_SYSTEMD_UNIT={unit}")])
    }

    /// An HTTP GET on the container's loopback, from a thread that joined its network namespace.
    fn http_get(&self, port: u16, path: &str) -> Option<(u16, String)> {
        let netns = fs::File::open(format!("/proc/{}/ns/net", self.leader)).ok()?;
        let path = path.to_string();
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a descriptor we hold; it moves only this thread.
            if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return None;
            }
            http_get(port, &path)
        })
        .join()
        .ok()?
    }

    /// Shuts the container down: SIGTERM to nspawn, which sends its PID 1 SIGRTMIN+3 (an orderly
    /// shutdown, nspawn's --kill-signal default with -b); SIGKILL to both after 15 s.
    fn poweroff(&mut self) {
        if let Ok(Some(_)) = self.nspawn.try_wait() {
            return;
        }
        // SAFETY: plain kill(2) of a process we started.
        unsafe { libc::kill(self.nspawn.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while matches!(self.nspawn.try_wait(), Ok(None)) {
            if Instant::now() > deadline {
                // SIGKILL to a PID namespace's init ends every process in it.
                // SAFETY: plain kill(2) of processes we started.
                unsafe {
                    if self.leader != 0 {
                        libc::kill(self.leader as i32, libc::SIGKILL);
                    }
                    libc::kill(self.nspawn.id() as i32, libc::SIGKILL);
                }
                let _ = self.nspawn.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.poweroff();
        // Nothing of it may stay mounted on the host.
        let dir = self.dir.path().to_string_lossy().into_owned();
        let left: Vec<_> = fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&dir))
            .map(str::to_string)
            .collect();
        if !left.is_empty() && !std::thread::panicking() {
            panic!("mounts left behind by the container: {left:?}");
        }
    }
}

/// The processes whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            // /proc/<p>/stat: "pid (comm) state ppid …"; comm may hold spaces and parentheses.
            fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse::<u32>().ok())
                == Some(pid)
        })
        .collect()
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool, context: impl Fn() -> String) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}\n{}", context());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "needs root, systemd and systemd-nspawn: bash .ci/install-tools, then cargo test -- --ignored"]
fn the_unit_as_shipped_runs_under_systemd_in_a_container() {
    if let Some(reason) = cannot_run() {
        panic!("the systemd test cannot run here: {reason}");
    }
    let started = Instant::now();
    let host = tempfile::tempdir().unwrap();
    // The binary, alone in a folder bound onto the container's /usr/local/bin.
    let bin = host.path().join("bin");
    fs::create_dir(&bin).unwrap();
    fs::copy(env!("CARGO_BIN_EXE_mimic-eye"), bin.join("mimic-eye")).unwrap();
    // /srv: the downloads (synthetic) and, made inside, the output.
    let srv = host.path().join("srv");
    fs::create_dir(&srv).unwrap();
    for d in [host.path(), &bin, &srv] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let planted = synth(&srv.join("physionet"), &["--patients", "6", "--others", "6", "--plain"]);
    let output = srv.join("mimic-eye");

    let binds = [format!("--bind-ro={}:/usr/local/bin", bin.display()), format!("--bind={}:/srv", srv.display())];
    let c = match Container::boot(&binds) {
        Ok(c) => c,
        Err(reason) => panic!("the container did not boot: {reason}"),
    };
    println!("synthetic input made and container booted in {:?}", started.elapsed());
    let version = c.run(&["systemctl", "--version"]);
    println!("{}", version.lines().next().unwrap_or_default());
    if version.contains("-BPF_FRAMEWORK") {
        println!(
            "NOTE: this systemd is built without BPF_FRAMEWORK: SocketBindAllow=/SocketBindDeny= are not enforced"
        );
    }

    // README "Running it as a service", inside: the user, the downloads readable by it, the
    // output owned by it, the config and the unit as shipped.
    c.run(&[
        "useradd",
        "--system",
        "--user-group",
        "--home",
        "/nonexistent",
        "--shell",
        "/usr/sbin/nologin",
        "mimic-eye",
    ]);
    c.run(&["chgrp", "-R", "mimic-eye", "/srv/physionet"]);
    c.run(&["chmod", "-R", "g+rX", "/srv/physionet"]);
    c.run(&["install", "-d", "-o", "mimic-eye", "-g", "mimic-eye", "-m", "750", "/srv/mimic-eye"]);
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = fs::read_to_string(manifest.join("config/mimic-eye.toml")).unwrap();
    c.write("/etc/mimic-eye/mimic-eye.toml", &config);
    c.write(
        "/etc/systemd/system/mimic-eye.service",
        &fs::read_to_string(manifest.join("deploy/mimic-eye.service")).unwrap(),
    );
    c.run(&["systemctl", "daemon-reload"]);
    let uid: u32 = c.run(&["id", "-u", "mimic-eye"]).trim().parse().unwrap();
    let gid: u32 = c.run(&["id", "-g", "mimic-eye"]).trim().parse().unwrap();
    let unit = "mimic-eye.service";
    let context = || {
        format!(
            "{}\n{}",
            c.run_for(&["systemctl", "status", "--no-pager", "-l", unit], Duration::from_secs(10))
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default(),
            c.run_for(&["journalctl", "--no-pager", "-o", "cat", "-u", unit], Duration::from_secs(10))
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        )
    };

    // Start: Type=notify, so this returns once READY=1 came; then the first build's STATUS.
    let start = c.run_for(&["systemctl", "start", unit], Duration::from_secs(70)).expect("systemctl start timed out");
    assert!(
        start.status.success(),
        "systemctl start failed: {}\n{}",
        String::from_utf8_lossy(&start.stderr),
        context()
    );
    assert_eq!(c.show(unit, "ActiveState"), "active", "{}", context());
    wait_for(
        "STATUS=idle after the first build",
        Duration::from_secs(30),
        || c.show(unit, "StatusText").starts_with("idle: patients "),
        context,
    );
    assert_eq!(c.show(unit, "NRestarts"), "0", "{}", context());
    assert!(c.show(unit, "StatusText").contains("patients 6"), "{}", context());
    // systemd took every line of the unit: nothing ignored or refused when it was loaded or
    // started. One thing is said and not a failure here: Debian 12's systemd is built without
    // BPF_FRAMEWORK, so SocketBindAllow=/SocketBindDeny= cannot be enforced (the unit's comment
    // says so); it is printed.
    let pid1 = c.run(&["journalctl", "--no-pager", "-o", "cat", "_PID=1"]);
    let unsupported_bpf = "configures source compiled BPF programs but the local system does not support that";
    let complaints: Vec<_> = pid1
        .lines()
        .filter(|l| l.contains("mimic-eye.service"))
        .filter(|l| ["gnor", "nknown", "support", "ailed", "nvalid", "efus", "arning"].iter().any(|w| l.contains(w)))
        .collect();
    for line in &complaints {
        if line.contains(unsupported_bpf) {
            println!("NOTE: systemd here: {line}");
        }
    }
    let complaints: Vec<_> = complaints.into_iter().filter(|l| !l.contains(unsupported_bpf)).collect();
    assert!(complaints.is_empty(), "systemd complained about the unit: {complaints:#?}");

    // /healthz on the metrics port as shipped, from the container's network namespace.
    let health = c.http_get(9898, "/healthz");
    assert_eq!(health.as_ref().map(|h| h.0), Some(200), "/healthz: {health:?}\n{}", context());

    // Whether this systemd enforces IPAddressDeny= at all (it needs cgroup v2's BPF firewall):
    // a transient unit with IPAddressDeny=any connects to the daemon. Said, not failed on.
    let probe = c.run_for(
        &[
            "systemd-run",
            "--wait",
            "--quiet",
            "-p",
            "IPAddressDeny=any",
            "bash",
            "-c",
            "exec 3<>/dev/tcp/127.0.0.1/9898",
        ],
        Duration::from_secs(30),
    );
    if probe.is_some_and(|o| o.status.success()) {
        println!("NOTE: IPAddressDeny=any did not stop a connection here: the unit's IPAddressDeny=/IPAddressAllow= are not enforced on this machine");
    }

    // An input change is applied: one more admissions row for a cohort patient.
    let sid = planted["cohort"][0].as_u64().unwrap();
    let admissions = srv.join("physionet/mimiciv/hosp/admissions.csv");
    let text = fs::read_to_string(&admissions).unwrap();
    let columns = text.lines().next().unwrap().split(',').count();
    let mut row = vec![String::new(); columns];
    row[0] = sid.to_string();
    row[1] = "29999999".into();
    fs::OpenOptions::new()
        .append(true)
        .open(&admissions)
        .unwrap()
        .write_all(format!("{}\n", row.join(",")).as_bytes())
        .unwrap();
    let patient_file = output.join(format!("patient_{sid}/Hosp/admissions.csv"));
    // settle_seconds = 5 as shipped, and the build itself.
    wait_for(
        "the admissions row in the output",
        Duration::from_secs(30),
        || fs::read_to_string(&patient_file).is_ok_and(|t| t.contains("29999999")),
        context,
    );

    // systemctl reload (ExecReload= sends SIGHUP) applies an edited config.
    assert_eq!(summary(&output)["profile"], "paper");
    c.write("/etc/mimic-eye/mimic-eye.toml", &config.replace("profile = \"paper\"", "profile = \"release\""));
    c.run(&["systemctl", "reload", unit]);
    wait_for(
        "the reloaded profile in summary.json",
        Duration::from_secs(30),
        || {
            fs::read(output.join("summary.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .is_some_and(|s| s["profile"] == "release")
        },
        context,
    );
    assert!(c.journal(unit).contains("configuration reloaded"), "{}", context());
    assert_eq!(c.show(unit, "ActiveState"), "active", "{}", context());

    // systemctl stop: SIGTERM, and the daemon is gone well within TimeoutStopSec.
    let t = Instant::now();
    let stop = c.run_for(&["systemctl", "stop", unit], Duration::from_secs(40)).expect("systemctl stop timed out");
    let stopping = t.elapsed();
    assert!(stop.status.success(), "systemctl stop: {}", String::from_utf8_lossy(&stop.stderr));
    assert!(stopping < Duration::from_secs(5), "systemctl stop took {stopping:?}\n{}", context());
    assert_eq!(c.show(unit, "ActiveState"), "inactive");
    assert_eq!(c.show(unit, "Result"), "success", "{}", context());
    println!("systemctl stop took {stopping:?}");

    // journald holds the daemon's JSON lines (--log-format json), every one of them.
    let journal = c.journal(unit);
    let lines: Vec<&str> = journal.lines().collect();
    assert!(lines.len() >= 5, "{journal}");
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["fields"]["message"].is_string(), "no fields.message: {line}");
    }
    for message in ["configuration reloaded", "input changed", "stopped"] {
        assert!(lines.iter().any(|l| l.contains(message)), "no {message:?} in the journal:\n{journal}");
    }

    // The output: the service user's, files 0640 and folders 0750 (UMask=0027).
    let mut stack = vec![output.clone()];
    let (mut files, mut dirs) = (0, 0);
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid()), (uid, gid), "owner of {}", p.display());
        let mode = m.mode() & 0o7777;
        if m.is_dir() {
            dirs += 1;
            assert_eq!(mode, 0o750, "mode of folder {}", p.display());
            stack.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else {
            files += 1;
            assert!(m.is_file(), "{} is not a regular file", p.display());
            assert_eq!(mode, 0o640, "mode of {}", p.display());
        }
    }
    assert!(files > 100 && dirs > 20, "{files} files, {dirs} folders");
    println!("output: {files} files, {dirs} folders; files: {}", summary(&output)["files"]);

    let mut c = c;
    c.poweroff();
    assert!(matches!(c.nspawn.try_wait(), Ok(Some(_))), "the container is still running");
    drop(c);
    println!("the whole test took {:?}", started.elapsed());
}
