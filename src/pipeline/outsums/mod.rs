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
//! takes the digest recorded while it was copied ([`state::CopyRecord`]). The listing and the
//! cache are streamed (the output walked in path order, merged with the last cache): memory
//! does not grow with the number of output files. A build that renamed and deleted nothing
//! (`.mimic-eye/listing-current` still there) does not walk at all: it makes the summary's and
//! report's lines again in the last listing. Files added to the output by hand are listed by
//! the next build that changes the output.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use sha2::Digest as _;

use crate::pipeline::file_list::ListReader;
use crate::pipeline::paths;
use crate::pipeline::state::{self, CopyRecord};
use crate::sums::{self, Digest, SUMS_FILE};

mod cache;
mod verify;

pub use verify::verify;

use cache::{CacheReader, Identity, CACHE};

/// Digests recorded while copying, for copies made since `since_ns` (the last listing: older
/// copies are in its cache), usable while a copy keeps its inode, mtime and size. Only copies
/// (`files = "copy"` or `"reflink"`) have one. Read from the jobs' file lists (and the
/// manifests of older builds) into a vector sorted by inode: 56 bytes a copy.
struct CopyDigests(Vec<(u64, i64, u64, Digest)>);

impl CopyDigests {
    fn load(output: &Path, since_ns: i64) -> Self {
        let mut all = Vec::new();
        let mut add = |r: &CopyRecord| {
            if let (Some(d), true) = (sums::parse_hex(&r.sha256), r.copy_ino != 0 && r.copy_mtime_ns >= since_ns) {
                all.push((r.copy_ino, r.copy_mtime_ns, r.source.size, d));
            }
        };
        for m in state::manifests(output) {
            m.copies.values().for_each(&mut add);
            // A list that cannot be read only costs hashing its copies again.
            let Some(Ok(mut list)) = m.file_list.as_ref().filter(|l| l.records).map(|l| ListReader::of(output, l))
            else {
                continue;
            };
            while let Some(Ok((_, copy))) = list.next_entry() {
                if let Some(record) = &copy {
                    add(record);
                }
            }
        }
        all.sort_unstable_by_key(|c| c.0);
        Self(all)
    }

    /// The digest recorded for the file with identity `id`, if it is a copy still as made.
    fn get(&self, id: Identity) -> Option<Digest> {
        let first = self.0.partition_point(|c| c.0 < id.ino);
        self.0[first..].iter().take_while(|c| c.0 == id.ino).find(|c| (c.1, c.2) == (id.mtime_ns, id.size)).map(|c| c.3)
    }
}

/// When the cache was last written, less a margin for the file system's clock, in
/// nanoseconds (the earliest time when there is none).
fn cache_written_ns(path: &Path) -> i64 {
    const MARGIN_NS: i64 = 2_000_000_000;
    fs::metadata(path).map_or(i64::MIN, |m| crate::fingerprint::mtime_ns(&m).saturating_sub(MARGIN_NS))
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
        state::set_output_mode(tmp.path())?;
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
pub(crate) fn write(output: &Path, cancel: &crate::shutdown::CancelToken) -> io::Result<(usize, usize)> {
    if let Some(listed) = patch(output)? {
        return Ok((listed, REWRITTEN_EVERY_BUILD.len()));
    }
    let state = paths::state_dir(output);
    let copies = CopyDigests::load(output, cache_written_ns(&state.join(CACHE)));
    let mut cache = CacheReader::open(&state.join(CACHE));
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
    crate::walk::each_listable_file(
        output,
        crate::walk::Tree::Output { state_dir: crate::pipeline::paths::STATE_DIR },
        &mut |rel| {
            let path = output.join(OsStr::from_bytes(rel));
            let meta = match fs::metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
            };
            let id = Identity::of(&meta);
            let digest = cache.lookup(rel, id).or_else(|| copies.get(id));
            batch.push(Entry { rel: rel.to_vec(), id, digest });
            if batch.len() == BATCH {
                // A stop ends the listing between batches; the last one stays in place.
                if cancel.is_cancelled() {
                    return Err(io::Error::new(io::ErrorKind::Interrupted, "cancelled: the build is stopping"));
                }
                out.add(output, &mut batch)?;
            }
            Ok(())
        },
    )?;
    out.add(output, &mut batch)?;
    let Listing { cache: new_cache, text, text_hash, text_len, listed, hashed } = out;
    let target = output.join(SUMS_FILE);
    if !holds(&target, text_len, &text_hash.finalize().into()) {
        text.finish(&target)?;
    }
    new_cache.finish(&state.join(CACHE))?;
    let _ = fs::remove_file(state.join("sha256-cache.json")); // the cache's earlier format
                                                              // Not synced: lost in a crash, it only costs the next build a walk.
    fs::write(paths::listing_current(output), b"")?;
    Ok((listed, hashed))
}

/// The files every build writes again (its summary and report): a listing that is current
/// otherwise needs only their lines made again.
const REWRITTEN_EVERY_BUILD: [&str; 2] = ["summary.json", crate::pipeline::report::REPORT_FILE];

/// A build that renamed and deleted nothing in the output (see [`paths::listing_current`]):
/// the last listing, its summary's and report's lines made again, instead of a walk of every
/// output file (most of the time of a rebuild that finds nothing to do). `None` when the last
/// listing cannot serve: the output is walked.
fn patch(output: &Path) -> io::Result<Option<usize>> {
    use std::io::BufRead;
    if !paths::listing_current(output).exists() {
        return Ok(None);
    }
    let Ok(last) = fs::File::open(output.join(SUMS_FILE)) else { return Ok(None) };
    let mut text = AtomicFile::new(&paths::state_dir(output))?;
    let (mut listed, mut patched) = (0, 0);
    for line in io::BufReader::with_capacity(1 << 16, last).split(b'\n') {
        let line = line?;
        // `<64 hex digits> <path>`, as `format_line` writes it (an escaped path starts with `\`).
        match REWRITTEN_EVERY_BUILD.iter().find(|name| line.get(65..) == Some(name.as_bytes())) {
            Some(name) => {
                text.file.write_all(&sums::format_line(&sums::hash_file(&output.join(name))?, name.as_bytes()))?;
                patched += 1;
            }
            None => {
                text.file.write_all(&line)?;
                text.file.write_all(b"\n")?;
            }
        }
        listed += 1;
    }
    if patched != REWRITTEN_EVERY_BUILD.len() {
        return Ok(None);
    }
    text.finish(&output.join(SUMS_FILE))?;
    Ok(Some(listed))
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
/// every output file, a hundred thousand of them at full size: on one thread, the longest step
/// after the tables). Returns how many were hashed.
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
