//! The Debian package, installed for real: `dpkg -i` on this machine, then the binary, the
//! user, the conffile, the unit, the man page and `validate` checked, then `dpkg --purge`.
//! Needs root, dpkg and the package (`bash deploy/debian/build.sh`; CI builds it first).

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};

use common::*;

fn sh(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The package `deploy/debian/build.sh` made for this version.
fn package() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/debian");
    let prefix = format!("mimic-eye_{}", env!("CARGO_PKG_VERSION"));
    fs::read_dir(&dir)
        .ok()
        .and_then(|d| {
            d.flatten().map(|e| e.path()).find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&prefix) && n.to_string_lossy().ends_with(".deb"))
            })
        })
        .unwrap_or_else(|| panic!("no {prefix}*.deb in {}: run bash deploy/debian/build.sh", dir.display()))
}

/// Purges the package when the test ends, however it ends.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = sh("dpkg", &["--purge", "mimic-eye"]);
    }
}

#[test]
#[ignore = "needs root, dpkg and the package: bash deploy/debian/build.sh (installs it on this machine, then purges it)"]
fn the_package_installs_a_working_binary_user_conffile_unit_and_man_page() {
    let deb = package();
    let info = sh("dpkg-deb", &["--info", deb.to_str().unwrap()]);
    assert!(text(&info).contains("Package: mimic-eye"), "{}", text(&info));
    let install = sh("dpkg", &["-i", deb.to_str().unwrap()]);
    let _installed = Installed;
    assert!(install.status.success(), "dpkg -i: {}", text(&install));

    let version = sh("/usr/bin/mimic-eye", &["--version"]);
    assert!(
        text(&version).starts_with(&format!("mimic-eye {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{}",
        text(&version)
    );
    assert!(sh("getent", &["passwd", "mimic-eye"]).status.success(), "no mimic-eye user");
    let conffiles = sh("dpkg-query", &["-W", "-f=${Conffiles}", "mimic-eye"]);
    assert!(text(&conffiles).contains("/etc/mimic-eye/mimic-eye.toml"), "{}", text(&conffiles));
    let listed = text(&sh("dpkg", &["-L", "mimic-eye"]));
    for path in [
        "/usr/bin/mimic-eye",
        "/lib/systemd/system/mimic-eye.service",
        "/usr/share/man/man1/mimic-eye.1.gz",
        "/usr/share/bash-completion/completions/mimic-eye",
        "/usr/share/doc/mimic-eye/prometheus/alerts.yml",
        "/usr/share/doc/mimic-eye/prometheus/grafana-dashboard.json",
    ] {
        assert!(listed.lines().any(|l| l == path), "{path} not in the package:\n{listed}");
    }

    // As shipped, the config names /srv/physionet, which this machine lacks: validate says so.
    let out = sh("/usr/bin/mimic-eye", &["validate"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("/srv/physionet"), "{}", text(&out));
    // With the input and output it names, it passes.
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    synth(&input, &["--patients", "2", "--others", "1"]);
    let config = write_config(tmp.path(), &input, &tmp.path().join("out"), 9898, "");
    let out = sh("/usr/bin/mimic-eye", &["validate", "--config", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    if Command::new("systemd-analyze").arg("--version").output().is_ok() {
        let verify = sh("systemd-analyze", &["verify", "/lib/systemd/system/mimic-eye.service"]);
        assert!(verify.status.success(), "{}", text(&verify));
    }

    drop(_installed);
    assert!(!std::path::Path::new("/usr/bin/mimic-eye").exists(), "purge left the binary");
}
