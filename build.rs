//! The commit the binary is built from (for `--version` and `mimic_eye_build_info`), and, with
//! feature `isal`: compiles the small C face over ISA-L's inflate and links the system's libisal
//! (Debian: `apt-get install libisal-dev`).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=src/gzip/isal_shim.c");
    println!("cargo:rustc-env=MIMIC_EYE_COMMIT={}", commit());
    #[cfg(feature = "isal")]
    {
        let mut build = cc::Build::new();
        build.file("src/gzip/isal_shim.c").opt_level(2).warnings(true);
        if let Err(e) = build.try_compile("mimic_eye_isal_shim") {
            panic!(
                "feature `isal` needs ISA-L's header and library (Debian/Ubuntu: apt-get install \
                 libisal-dev; elsewhere: https://github.com/intel/isa-l): {e}"
            );
        }
        println!("cargo:rustc-link-lib=isal");
    }
}

/// `git rev-parse --short=12 HEAD`, or `unknown` (a source tarball, no git). Rerun when HEAD
/// moves: HEAD itself on a checkout, the branch's ref on a commit.
fn commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
    };
    for file in ["HEAD", "packed-refs"] {
        if let Some(path) = git(&["rev-parse", "--git-path", file]) {
            if std::path::Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(path) = git(&["rev-parse", "--git-path", &reference]) {
            if std::path::Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_string())
}
