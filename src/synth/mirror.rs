//! What makes a synthetic tree look like a PhysioNet wget mirror (`physionet.md` §1–2): wget's
//! `index.html` listing page in every folder, and PhysioNet's `SHA256SUMS.txt` per version.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::imaging::INDEX_HTML;
use super::spec::DatasetRoots;
use crate::layout::DatasetKey;

const SUMS: &str = "SHA256SUMS.txt";
const INDEX: &str = "index.html";

/// Adds the listing pages, then each version's checksum file.
pub(super) fn finish(root: &Path, roots: &DatasetRoots) -> io::Result<()> {
    add_index_pages(&root.join("physionet.org"))?;
    for version in DatasetKey::ALL.map(|k| roots.get(k)) {
        write_sums(version)?;
    }
    Ok(())
}

/// An `index.html` in `dir` and every folder below it that lacks one.
fn add_index_pages(dir: &Path) -> io::Result<()> {
    let page = dir.join(INDEX);
    if !page.exists() {
        std::fs::write(&page, INDEX_HTML)?;
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            add_index_pages(&entry.path())?;
        }
    }
    Ok(())
}

/// Every file below `dir`, as `/`-separated paths relative to it.
fn files_below(dir: &Path, prefix: &str, out: &mut Vec<String>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().into_string().map_err(|n| {
            io::Error::new(io::ErrorKind::InvalidData, format!("non UTF-8 file name {n:?} in {}", dir.display()))
        })?;
        let rel = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        if entry.file_type()?.is_dir() {
            files_below(&entry.path(), &rel, out)?;
        } else {
            out.push(rel);
        }
    }
    Ok(())
}

/// PhysioNet's format: `<64 lower-case hex> <path>` per file, LF, sorted by path. The listing
/// pages are left out, as on PhysioNet: they are wget's, not the project's (the real MIMIC-IV
/// demo's list in tests/data has none), so a checker must expect files the list lacks.
fn write_sums(version: &Path) -> io::Result<()> {
    let mut files = Vec::new();
    files_below(version, "", &mut files)?;
    files.retain(|f| f != SUMS && f.rsplit('/').next() != Some(INDEX));
    files.sort();
    let mut text = String::new();
    for rel in &files {
        let mut hasher = Sha256::new();
        io::copy(&mut File::open(version.join(rel))?, &mut hasher)?;
        let digest = hasher.finalize();
        for b in digest {
            text.push_str(&format!("{b:02x}"));
        }
        text.push(' ');
        text.push_str(rel);
        text.push('\n');
    }
    File::create(version.join(SUMS))?.write_all(text.as_bytes())
}
