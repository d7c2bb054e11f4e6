//! What `fetch` downloads, in order: each version's `SHA256SUMS.txt`, then the tables the build
//! reads (MIMIC-IV hosp, icu and 1.0's core; MIMIC-IV-ED; MIMIC-CXR-JPG's `*.csv.gz`; REFLACX
//! and EyeGaze whole, they are small), then the cohort's images and reports, chosen by the
//! build's own rule and code. Listings are read a line at a time (MIMIC-CXR-JPG's has a
//! million lines) and tasks handed out as they are found.

use std::collections::HashSet;
use std::io::{self, BufRead};
use std::path::{Path, PathBuf};

use crate::layout::DatasetKey;
use crate::sums::{self, Digest, SUMS_FILE};

use super::download::Task;

/// A dataset as fetched: its slug and version, where it goes and where it comes from.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    pub key: DatasetKey,
    pub version: String,
    /// `<input>/<slug>/<version>`.
    pub folder: PathBuf,
    /// `<base>/<slug>/<version>/`.
    pub url: String,
}

impl Source {
    pub(crate) fn new(input: &Path, base: &str, key: DatasetKey, version: &str) -> Self {
        Self {
            key,
            version: version.to_string(),
            folder: input.join(key.slug()).join(version),
            url: format!("{base}{}/{version}/", key.slug()),
        }
    }

    /// The task of the file `rel` (relative to the version folder), with its listed digest.
    pub(crate) fn task(&self, rel: &str, expected: Option<Digest>) -> Task {
        let url_path: String = rel.split('/').map(percent_encode).collect::<Vec<_>>().join("/");
        Task { url: format!("{}{url_path}", self.url), dest: self.folder.join(rel), expected }
    }

    pub(crate) fn listing(&self) -> PathBuf {
        self.folder.join(SUMS_FILE)
    }
}

/// Escapes what a URL path segment cannot hold as it is.
fn percent_encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The version folders an index page lists (`<a href="2.2/">`), newest last.
pub(crate) fn versions_in_index(html: &str) -> Vec<String> {
    let mut versions: Vec<String> = html
        .split("href=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .filter_map(|href| href.strip_suffix('/'))
        .filter(|v| {
            !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit() || b == b'.') && v.as_bytes()[0].is_ascii_digit()
        })
        .map(str::to_string)
        .collect();
    let order = |v: &String| v.split('.').map(|p| p.parse::<u64>().unwrap_or(0)).collect::<Vec<_>>();
    versions.sort_by_key(order);
    versions.dedup();
    versions
}

/// Whether the build reads `rel` (a path of `key`'s listing) as a table, or whole.
pub(crate) fn is_table(key: DatasetKey, rel: &str) -> bool {
    let table = rel.ends_with(".csv.gz") || rel.ends_with(".csv");
    match key {
        DatasetKey::MimicIv => {
            table && ["hosp/", "icu/", "core/"].iter().any(|m| rel.starts_with(m) && !rel[m.len()..].contains('/'))
        }
        DatasetKey::MimicIvEd => table && rel.starts_with("ed/") && !rel[3..].contains('/'),
        DatasetKey::MimicCxrJpg => table && !rel.contains('/'),
        DatasetKey::MimicCxr => false,
        // Small: every file, tables, readings and transcripts alike.
        DatasetKey::Reflacx | DatasetKey::EgdCxr => true,
    }
}

/// Each line of `source`'s listing that `keep` accepts, as a task; returns how many lines the
/// listing has. A path leaving the version folder is passed over (it is data, not a command).
pub(crate) fn each_listed(
    source: &Source,
    keep: &mut dyn FnMut(&str) -> bool,
    each: &mut dyn FnMut(Task) -> bool,
) -> io::Result<u64> {
    let file = crate::sys::open_regular(&source.listing())?;
    let mut lines = 0;
    for (i, line) in io::BufReader::with_capacity(1 << 16, file).split(b'\n').enumerate() {
        let line = line?;
        let Ok(Some((rel, digest))) = sums::parse_line(i, &line) else { continue };
        lines += 1;
        if !sums::is_plain_relative(&rel) {
            continue;
        }
        let Ok(rel) = std::str::from_utf8(&rel) else { continue };
        if keep(rel) && !each(source.task(rel, Some(digest))) {
            break;
        }
    }
    Ok(lines)
}

/// The cohort's folders as sets of path hashes relative to one dataset folder: files directly
/// in a flat folder, and anywhere below a deep one (as `Sums::add_folders` keeps lines).
#[derive(Debug, Default)]
pub(crate) struct FolderSets {
    flat: HashSet<u64>,
    deep: HashSet<u64>,
}

fn path_key(rel: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    crate::fingerprint::Fnv::default().bytes(rel.as_os_str().as_bytes()).finish()
}

impl FolderSets {
    /// The folders of `folders` that lie in `dataset_folder`.
    pub(crate) fn of(dataset_folder: &Path, folders: &[(PathBuf, bool)]) -> Self {
        let mut sets = Self::default();
        for (path, recursive) in folders {
            if let Ok(rel) = path.strip_prefix(dataset_folder) {
                (if *recursive { &mut sets.deep } else { &mut sets.flat }).insert(path_key(rel));
            }
        }
        sets
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.flat.is_empty() && self.deep.is_empty()
    }

    /// Whether the listed file `rel` lies in one of the folders.
    pub(crate) fn holds(&self, rel: &str) -> bool {
        let rel = Path::new(rel);
        rel.parent().is_some_and(|p| self.flat.contains(&path_key(p)))
            || (!self.deep.is_empty() && rel.ancestors().skip(1).any(|a| self.deep.contains(&path_key(a))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_folders_are_read_from_an_index_page_newest_last() {
        let html = r#"<a href="../">../</a><a href="2.2/">2.2/</a><a href="10.0/">10.0/</a><a href="3.1/">3.1/</a><a href="SHA256SUMS.txt">x</a><a href="old/">old/</a>"#;
        assert_eq!(versions_in_index(html), ["2.2", "3.1", "10.0"]);
    }

    #[test]
    fn tables_are_what_the_build_reads() {
        assert!(is_table(DatasetKey::MimicIv, "hosp/labevents.csv.gz"));
        assert!(is_table(DatasetKey::MimicIv, "core/patients.csv.gz"));
        assert!(!is_table(DatasetKey::MimicIv, "LICENSE.txt"));
        assert!(!is_table(DatasetKey::MimicIv, "hosp/sub/x.csv.gz"));
        assert!(is_table(DatasetKey::MimicCxrJpg, "mimic-cxr-2.0.0-metadata.csv.gz"));
        assert!(!is_table(DatasetKey::MimicCxrJpg, "files/p10/p10000032/s5/a.jpg"));
        assert!(is_table(DatasetKey::Reflacx, "main_data/P102R108387/fixations.csv"));
    }

    #[test]
    fn folder_sets_hold_files_directly_in_flat_folders_and_anywhere_below_deep_ones() {
        let root = Path::new("/in/mimic-cxr-jpg/2.0.0");
        let sets = FolderSets::of(
            root,
            &[
                (root.join("files/p10/p1/s5"), false),
                (root.join("audio/d1"), true),
                (PathBuf::from("/elsewhere"), true),
            ],
        );
        assert!(sets.holds("files/p10/p1/s5/a.jpg"));
        assert!(!sets.holds("files/p10/p1/s5/deeper/a.jpg"));
        assert!(!sets.holds("files/p10/p1/s6/a.jpg"));
        assert!(sets.holds("audio/d1/x/y.wav"));
        assert_eq!(percent_encode("a b%.jpg"), "a%20b%25.jpg");
    }
}
