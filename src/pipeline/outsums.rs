//! The output's own `SHA256SUMS.txt`, in PhysioNet's format, and `mimic-eye verify`.
//!
//! Every file under the output is listed except `SHA256SUMS.txt` itself and the state folder
//! `.mimic-eye/`, sorted by path bytes, so `sha256sum -c SHA256SUMS.txt` run in the output
//! checks a copy of it. `summary.json` is listed too (it is final by then); its line changes
//! with every build (durations, memory), every other line only when its file does.
//!
//! Hashing a tree of thousands of images at the end of every build would cost more than the
//! build: a cache in `.mimic-eye/sha256-cache.json` keeps each file's digest with its size,
//! mtime and inode, so only files that changed are read again; a copy made by this build
//! takes the digest recorded while it was copied ([`publish::CopyRecord`]).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::pipeline::paths::{self, STATE_DIR};
use crate::pipeline::publish;
use crate::sums::{self, Digest, SUMS_FILE};

const CACHE: &str = "sha256-cache.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Identity {
    size: u64,
    mtime_ns: i64,
    ino: u64,
}

impl Identity {
    fn of(m: &fs::Metadata) -> Self {
        Self {
            size: m.size(),
            mtime_ns: m.mtime().saturating_mul(1_000_000_000).saturating_add(m.mtime_nsec()),
            ino: m.ino(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cached {
    #[serde(flatten)]
    id: Identity,
    sha256: String,
}

/// Every file under `root` that the manifest covers, relative, as path bytes (symbolic links
/// to files included: `sha256sum` follows them).
fn listable_files(root: &Path) -> io::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let entries = match fs::read_dir(root.join(&rel)) {
            Ok(e) => e,
            Err(e) if rel.as_os_str().is_empty() => return Err(e),
            Err(_) => continue,
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let path = rel.join(&name);
            if rel.as_os_str().is_empty() && (name == STATE_DIR || name == SUMS_FILE) {
                continue;
            }
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() || (kind.is_symlink() && root.join(&path).is_file()) {
                out.push(path.as_os_str().as_bytes().to_vec());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Digests recorded while copying, by output path: usable while the copy keeps its identity.
fn copy_digests(output: &Path) -> BTreeMap<Vec<u8>, (u64, i64, u64, Digest)> {
    let mut out = BTreeMap::new();
    for m in publish::all_manifests(output) {
        for (path, r) in m.copies {
            if let (Some(d), true) = (sums::parse_hex(&r.sha256), r.copy_ino != 0) {
                out.insert(path.as_os_str().as_bytes().to_vec(), (r.copy_ino, r.copy_mtime_ns, r.source.size, d));
            }
        }
    }
    out
}

/// Writes `<output>/SHA256SUMS.txt` (only when its text changes); returns the number of files
/// listed and how many were read to hash them.
pub(super) fn write(output: &Path) -> io::Result<(usize, usize)> {
    let cache_path = paths::state_dir(output).join(CACHE);
    let cache: BTreeMap<String, Cached> =
        fs::read(&cache_path).ok().and_then(|t| serde_json::from_slice(&t).ok()).unwrap_or_default();
    let copies = copy_digests(output);
    let mut new_cache = BTreeMap::new();
    let mut text = Vec::new();
    let mut hashed = 0;
    let files = listable_files(output)?;
    for rel in &files {
        let path = output.join(std::ffi::OsStr::from_bytes(rel));
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        };
        let id = Identity::of(&meta);
        let key = String::from_utf8_lossy(rel).into_owned();
        let known = cache
            .get(&key)
            .filter(|c| c.id == id)
            .and_then(|c| sums::parse_hex(&c.sha256))
            .or_else(|| copies.get(rel).filter(|c| (c.0, c.1, c.2) == (id.ino, id.mtime_ns, id.size)).map(|c| c.3));
        let digest = match known {
            Some(d) => d,
            None => {
                hashed += 1;
                sums::hash_file(&path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?
            }
        };
        // Names that are not UTF-8 are listed, but not cached (the cache is JSON).
        if std::str::from_utf8(rel).is_ok() {
            new_cache.insert(key, Cached { id, sha256: sums::hex(&digest) });
        }
        text.extend_from_slice(&sums::format_line(&digest, rel));
    }
    let target = output.join(SUMS_FILE);
    if fs::read(&target).ok().as_deref() != Some(&text[..]) {
        publish::write_atomic(&target, &text)?;
    }
    publish::write_atomic(&cache_path, &serde_json::to_vec(&new_cache).map_err(io::Error::other)?)?;
    Ok((files.len(), hashed))
}

/// What `mimic-eye verify` found.
#[derive(Debug, Default, Serialize)]
pub struct Verification {
    pub listed: usize,
    pub ok: usize,
    pub changed: Vec<String>,
    pub missing: Vec<String>,
    /// Present, not listed, not under `.mimic-eye/`.
    pub extra: Vec<String>,
}

impl Verification {
    pub fn clean(&self) -> bool {
        self.changed.is_empty() && self.missing.is_empty() && self.extra.is_empty()
    }

    pub fn text(&self) -> String {
        let mut s = String::new();
        for (what, list) in [("changed", &self.changed), ("missing", &self.missing), ("extra", &self.extra)] {
            for p in list {
                s.push_str(&format!("{what}: {p}\n"));
            }
        }
        s.push_str(&format!(
            "{} listed, {} verified, {} changed, {} missing, {} extra\n",
            self.listed,
            self.ok,
            self.changed.len(),
            self.missing.len(),
            self.extra.len()
        ));
        s
    }
}

/// Re-hashes every file `<output>/SHA256SUMS.txt` lists and looks for files it does not list.
pub fn verify(output: &Path) -> anyhow::Result<Verification> {
    use anyhow::Context;
    let list = output.join(SUMS_FILE);
    let text = fs::read(&list).with_context(|| format!("reading {}", list.display()))?;
    let listed = sums::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", list.display()))?;
    let mut v = Verification { listed: listed.len(), ..Default::default() };
    let names: std::collections::HashSet<&[u8]> = listed.iter().map(|(p, _)| p.as_slice()).collect();
    for (rel, digest) in &listed {
        let shown = String::from_utf8_lossy(rel).into_owned();
        let path = output.join(std::ffi::OsStr::from_bytes(rel));
        match sums::hash_file(&path) {
            Ok(d) if d == *digest => v.ok += 1,
            Ok(_) => v.changed.push(shown),
            Err(e) if e.kind() == io::ErrorKind::NotFound => v.missing.push(shown),
            Err(e) => v.changed.push(format!("{shown} ({e})")),
        }
    }
    for rel in listable_files(output)? {
        if !names.contains(rel.as_slice()) {
            v.extra.push(String::from_utf8_lossy(&rel).into_owned());
        }
    }
    Ok(v)
}
