//! The output's own `SHA256SUMS.txt`, in PhysioNet's format, and `mimic-eye verify`.
//!
//! Every file under the output is listed except `SHA256SUMS.txt` itself and the state folder
//! `.mimic-eye/`, sorted by path bytes, so `sha256sum -c SHA256SUMS.txt` run in the output
//! checks a copy of it. `summary.json` is listed too (it is final by then); its line changes
//! with every build (durations, memory), every other line only when its file does.
//!
//! Hashing a tree of thousands of images at the end of every build would cost more than the
//! build: a cache in `.mimic-eye/sha256-cache.txt` keeps each file's digest with its size,
//! mtime and inode, so only files that changed are read again; a copy made by this build
//! takes the digest recorded while it was copied ([`publish::CopyRecord`]). The listing and the
//! cache are streamed (the output walked in path order, merged with the last cache): memory
//! does not grow with the number of output files.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;
use sha2::Digest as _;

use crate::pipeline::paths;
use crate::pipeline::publish;
use crate::sums::{self, Digest, SUMS_FILE};

mod cache;
mod walk;

use cache::{CacheReader, Identity, CACHE};

/// Digests recorded while copying, by the copy's inode: usable while the copy keeps its
/// mtime and size. Only copies (`files = "copy"` or `"reflink"`) have one.
fn copy_digests(output: &Path) -> HashMap<u64, (i64, u64, Digest)> {
    let mut out = HashMap::new();
    for m in publish::manifests(output) {
        for r in m.copies.into_values() {
            if let (Some(d), true) = (sums::parse_hex(&r.sha256), r.copy_ino != 0) {
                out.insert(r.copy_ino, (r.copy_mtime_ns, r.source.size, d));
            }
        }
    }
    out
}

/// A file being written beside its final path, renamed over it when complete.
struct AtomicFile {
    file: BufWriter<tempfile::NamedTempFile>,
}

impl AtomicFile {
    fn new(dir: &Path) -> io::Result<Self> {
        Ok(Self { file: BufWriter::with_capacity(1 << 16, tempfile::NamedTempFile::new_in(dir)?) })
    }

    fn finish(self, target: &Path) -> io::Result<()> {
        let tmp = self.file.into_inner().map_err(|e| e.into_error())?;
        publish::set_output_mode(tmp.path())?;
        tmp.as_file().sync_all()?;
        tmp.persist(target).map_err(|e| e.error)?;
        Ok(())
    }
}

/// Whether the file at `path` holds exactly the bytes whose length and SHA-256 are given.
fn holds(path: &Path, len: u64, digest: &Digest) -> bool {
    fs::metadata(path).is_ok_and(|m| m.len() == len) && sums::hash_file(path).is_ok_and(|d| d == *digest)
}

/// Files looked up, then hashed in parallel, per round: bounds the paths held in memory.
const BATCH: usize = 1024;

/// A file of the listing, and its digest once known.
struct Entry {
    rel: Vec<u8>,
    id: Identity,
    digest: Option<Digest>,
}

/// Writes `<output>/SHA256SUMS.txt` (replaced only when its text changes) and the digest
/// cache, streaming: the output is walked in path order and merged with the last cache.
/// Returns the number of files listed and how many were read to hash them.
pub(crate) fn write(output: &Path) -> io::Result<(usize, usize)> {
    let state = paths::state_dir(output);
    let mut cache = CacheReader::open(&state.join(CACHE));
    let copies = copy_digests(output);
    let mut out = Listing {
        cache: AtomicFile::new(&state)?,
        // Written in the state folder (the walk would list a temporary file at the top).
        text: AtomicFile::new(&state)?,
        text_hash: sha2::Sha256::new(),
        text_len: 0,
        listed: 0,
        hashed: 0,
    };
    let mut batch: Vec<Entry> = Vec::with_capacity(BATCH);
    walk::each_listable_file(output, &mut |rel| {
        let path = output.join(OsStr::from_bytes(rel));
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        };
        let id = Identity::of(&meta);
        let copied = || copies.get(&id.ino).filter(|c| (c.0, c.1) == (id.mtime_ns, id.size)).map(|c| c.2);
        let digest = cache.lookup(rel, id).or_else(copied);
        batch.push(Entry { rel: rel.to_vec(), id, digest });
        if batch.len() == BATCH {
            out.add(output, &mut batch)?;
        }
        Ok(())
    })?;
    out.add(output, &mut batch)?;
    let Listing { cache: new_cache, text, text_hash, text_len, listed, hashed } = out;
    let target = output.join(SUMS_FILE);
    if !holds(&target, text_len, &text_hash.finalize().into()) {
        text.finish(&target)?;
    }
    new_cache.finish(&state.join(CACHE))?;
    let _ = fs::remove_file(state.join("sha256-cache.json")); // the cache's earlier format
    Ok((listed, hashed))
}

/// The listing and the new cache being written.
struct Listing {
    cache: AtomicFile,
    text: AtomicFile,
    text_hash: sha2::Sha256,
    text_len: u64,
    listed: usize,
    hashed: usize,
}

impl Listing {
    /// Hashes the batch's files without a known digest, then writes its lines in order.
    fn add(&mut self, output: &Path, batch: &mut Vec<Entry>) -> io::Result<()> {
        self.hashed += hash_unknown(output, batch)?;
        for e in batch.drain(..) {
            let digest = e.digest.ok_or_else(|| io::Error::other("a file was left unhashed"))?;
            cache::write_line(&mut self.cache.file, &e.rel, e.id, &digest)?;
            let line = sums::format_line(&digest, &e.rel);
            self.text_hash.update(&line);
            self.text_len += line.len() as u64;
            self.text.file.write_all(&line)?;
            self.listed += 1;
        }
        Ok(())
    }
}

/// Hashes the entries without a digest on up to [`HASH_THREADS`] threads (a first build hashes
/// every output file: on one thread that was the longest step after the tables on the
/// full-size world, 106,520 files). Returns how many were hashed.
fn hash_unknown(output: &Path, batch: &mut [Entry]) -> io::Result<usize> {
    let unknown: Vec<usize> = (0..batch.len()).filter(|&i| batch[i].digest.is_none()).collect();
    if unknown.is_empty() {
        return Ok(0);
    }
    // No helper thread for a batch with one changed file (a daemon's typical rebuild).
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(HASH_THREADS).min(unknown.len());
    let next = AtomicUsize::new(0);
    let entries: &[Entry] = batch;
    let work = || -> io::Result<Vec<(usize, Digest)>> {
        let mut done = Vec::new();
        while let Some(&i) = unknown.get(next.fetch_add(1, Ordering::Relaxed)) {
            let path = output.join(OsStr::from_bytes(&entries[i].rel));
            let digest =
                sums::hash_file(&path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            done.push((i, digest));
        }
        Ok(done)
    };
    let results: Vec<io::Result<Vec<(usize, Digest)>>> = std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
        let mine = work();
        let panicked = || Err(io::Error::other("a hashing thread panicked"));
        helpers.into_iter().map(|h| h.join().unwrap_or_else(|_| panicked())).chain([mine]).collect()
    });
    for (i, digest) in results.into_iter().collect::<io::Result<Vec<_>>>()?.into_iter().flatten() {
        batch[i].digest = Some(digest);
    }
    Ok(unknown.len())
}

/// Threads hashing output files at the end of a build.
const HASH_THREADS: usize = 4;

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
    walk::each_listable_file(output, &mut |rel| {
        if !names.contains(rel) {
            v.extra.push(String::from_utf8_lossy(rel).into_owned());
        }
        Ok(())
    })?;
    Ok(v)
}
