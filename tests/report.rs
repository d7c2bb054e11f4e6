//! `report.html`: written by every build, its numbers those of summary.json; rendered by a
//! real headless Chromium (a screenshot kept in `target/tmp/`), and served by the daemon at `/`
//! with what it is doing now.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// The text of the element with `id`, in a page.
fn by_id(page: &str, id: &str) -> Option<String> {
    let start = page.find(&format!("id=\"{id}\""))?;
    let rest = &page[start..];
    let open = rest.find('>')? + 1;
    let close = rest[open..].find('<')?;
    Some(rest[open..open + close].to_string())
}

/// Every number the page shows that summary.json also holds.
fn assert_page_matches(page: &str, summary: &serde_json::Value) {
    for key in ["patients", "stays", "images", "linked_images"] {
        assert_eq!(by_id(page, key), Some(summary[key].to_string()), "{key}");
    }
    let rules = &summary["links_by_rule"];
    for (id, key) in [("within-stay", "within_stay"), ("within-window", "within_window"), ("unlinked", "unlinked")] {
        assert_eq!(by_id(page, id), Some(rules[key].to_string()), "{id}");
    }
    let mut images = 0;
    for (view, sources) in summary["images_by_view"].as_object().unwrap() {
        let view_id: String = view.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
        for (source, n) in sources.as_object().unwrap() {
            assert_eq!(by_id(page, &format!("view-{view_id}-{source}")), Some(n.to_string()), "{view} {source}");
            images += n.as_u64().unwrap();
        }
    }
    assert_eq!(images, summary["images"].as_u64().unwrap(), "the composition covers every image");
    for (dataset, p) in summary["datasets"].as_object().unwrap() {
        let id: String = dataset.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
        assert_eq!(by_id(page, &format!("sums-{id}")).as_deref(), p["sha256sums"].as_str(), "{dataset}");
    }
}

fn world(root: &Path) -> (PathBuf, PathBuf) {
    let (input, output) = (root.join("in"), root.join("out"));
    synth(&input, &["--patients", "12", "--others", "6", "--layout", "physionet"]);
    (input.join("physionet.org/files"), output)
}

#[test]
fn every_build_writes_a_report_whose_numbers_are_the_summarys() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, output) = world(tmp.path());
    let summary = build(&input, &output, &["--window-days", "3"]);
    let path = output.join("report.html");
    let page = fs::read_to_string(&path).unwrap();
    assert_page_matches(&page, &summary);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
    // Self-contained: nothing fetched from elsewhere, no script.
    for outside in ["http://", "https://", "<script", "src=", "@import"] {
        assert!(!page.contains(outside), "the report refers to {outside}");
    }
    // Listed in the output's own checksums like every file.
    let sums = fs::read_to_string(output.join("SHA256SUMS.txt")).unwrap();
    assert!(sums.lines().any(|l| l.ends_with(" report.html")), "report.html is not in SHA256SUMS.txt");
}

/// A headless Chromium, started as a machine without a display and a network allows.
fn chromium(args: &[&str]) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .output()
        .expect("chromium runs")
}

/// A screenshot of `url`, kept in `target/tmp/` as the test's artifact; its PNG size checked.
fn screenshot(url: &str, name: &str) -> PathBuf {
    let png = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = fs::remove_file(&png);
    let out = chromium(&["--window-size=1100,1800", &format!("--screenshot={}", png.display()), url]);
    let bytes = fs::read(&png).unwrap_or_else(|_| panic!("no screenshot: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(&bytes[1..4], b"PNG");
    let (width, height) =
        (u32::from_be_bytes(bytes[16..20].try_into().unwrap()), u32::from_be_bytes(bytes[20..24].try_into().unwrap()));
    assert_eq!((width, height), (1100, 1800));
    // A blank page compresses to a few KB; the report's tables and bars do not.
    assert!(bytes.len() > 30_000, "{name} looks blank: {} bytes", bytes.len());
    println!("screenshot: {}", png.display());
    png
}

#[test]
#[ignore = "needs chromium: bash .ci/install-tools, then cargo test -- --ignored"]
fn chromium_renders_the_report_and_the_daemons_page_with_the_summarys_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, output) = world(tmp.path());
    let summary = build(&input, &output, &["--window-days", "3"]);
    let url = format!("file://{}", output.join("report.html").display());
    let dom = chromium(&["--dump-dom", &url]);
    assert!(dom.status.success(), "{}", String::from_utf8_lossy(&dom.stderr));
    assert_page_matches(&String::from_utf8_lossy(&dom.stdout), &summary);
    screenshot(&url, "report.png");

    // The daemon's page: the same report, headed by its phase and pending inputs.
    let port = free_port();
    let config = write_config(tmp.path(), &input, &tmp.path().join("served"), port, "window_days = 3\n");
    let daemon = Daemon::start(&config, port);
    daemon.wait_idle(120);
    let served = common::summary(&tmp.path().join("served"));
    let dom = chromium(&["--dump-dom", &format!("http://127.0.0.1:{port}/")]);
    let page = String::from_utf8_lossy(&dom.stdout).into_owned();
    assert_eq!(by_id(&page, "phase").as_deref(), Some("idle"), "{page}");
    assert_eq!(by_id(&page, "pending").as_deref(), Some("0"));
    assert_page_matches(&page, &served);
    screenshot(&format!("http://127.0.0.1:{port}/"), "daemon-page.png");
    daemon.stop();
}
