//! Opening an input table as a stream of decoded bytes.
//!
//! Every file is read on its own thread and handed over in 256 KiB chunks through a bounded
//! channel, so reading (for `.csv.gz`: decoding every gzip member, see [`crate::gzip`]) and
//! record scanning run on two cores at once.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest as _, Sha256};

use crate::digest::{Digest, Expected};
use crate::fingerprint::FileIdentity;

/// Files up to this size are read where they are opened (gzip: compressed size).
const INLINE_MAX_BYTES: u64 = 64 << 10;
const INLINE_GZIP_MAX_BYTES: u64 = 16 << 10;

/// Whether a file of `size` bytes at `path` is read at once where it is opened (a REFLACX
/// reading's ellipses, a short side table): a thread and a 256 KiB buffer per file would cost
/// more than the read. One rule for the decoding and the hashing here and the table reads of
/// the pipeline.
pub(crate) fn is_small(path: &Path, size: u64) -> bool {
    size <= if is_gzip_name(path) { INLINE_GZIP_MAX_BYTES } else { INLINE_MAX_BYTES }
}
/// Bytes handed over per chunk by the decode thread.
pub(crate) const CHUNK: usize = 256 << 10;
/// Chunks in flight between the decode thread and the scanner.
const DECODE_QUEUE: usize = 4;
/// Used buffers kept for the decode thread to refill.
const SPARE_BUFFERS: usize = 16;

/// A failure while reading the source: the cause and where it happened.
#[derive(Debug, thiserror::Error)]
#[error("{cause} (at input byte {input_offset}, decoded byte {decoded_offset})")]
pub struct SourceError {
    pub input_offset: u64,
    pub decoded_offset: u64,
    #[source]
    pub cause: io::Error,
}

/// Counts the bytes taken from the underlying file (the progress bar and error offsets use it)
/// and, when asked, hands them to the hash: it sees exactly the file's bytes (compressed for
/// `.gz`), so checking a download costs no second pass.
struct Counting<R> {
    inner: R,
    read: Arc<AtomicU64>,
    hash: Option<Arc<Mutex<HashState>>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(hash) = &self.hash {
            hash.lock().unwrap_or_else(|e| e.into_inner()).feed(&buf[..n]);
        }
        Ok(n)
    }
}

/// Copies of the file's bytes in flight to the hashing thread.
const HASH_QUEUE: usize = 4;

/// The SHA-256 of the bytes read so far, finished at the end of the read.
///
/// A large file is hashed on a thread of its own, fed copies of what was read through a bounded
/// channel: SHA-256 costs about as much as inflating, and on the reading thread it would make the
/// read bound by both rather than by inflating alone (docs/PERFORMANCE.md). A copy of a chunk
/// costs a small fraction of hashing it. A small file is hashed where it is read.
enum HashState {
    Inline(Sha256),
    Threaded(HashThread),
    Done(Option<Digest>),
}

struct HashThread {
    bytes: std::sync::mpsc::SyncSender<Vec<u8>>,
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
    thread: std::thread::JoinHandle<Digest>,
}

impl HashState {
    fn new(threaded: bool, name: &str) -> io::Result<Arc<Mutex<Self>>> {
        let state = if threaded {
            let (bytes, to_hash) = std::sync::mpsc::sync_channel::<Vec<u8>>(HASH_QUEUE);
            let (give_back, spare) = std::sync::mpsc::sync_channel::<Vec<u8>>(HASH_QUEUE + 2);
            let thread = std::thread::Builder::new().name(format!("sha256 {name}")).spawn(move || {
                let mut hasher = Sha256::new();
                for buf in to_hash {
                    hasher.update(&buf);
                    let _ = give_back.try_send(buf);
                }
                hasher.finalize().into()
            })?;
            Self::Threaded(HashThread { bytes, spare, thread })
        } else {
            Self::Inline(Sha256::new())
        };
        Ok(Arc::new(Mutex::new(state)))
    }

    fn feed(&mut self, bytes: &[u8]) {
        match self {
            Self::Inline(h) => h.update(bytes),
            Self::Threaded(t) => {
                let mut copy = t.spare.try_recv().unwrap_or_default();
                copy.clear();
                copy.extend_from_slice(bytes);
                if t.bytes.send(copy).is_err() {
                    // The hashing thread is gone (it panicked): finish() reports no digest.
                    *self = Self::Done(None);
                }
            }
            Self::Done(_) => {}
        }
    }

    /// Ends the hash (waiting for the hashing thread) and keeps the digest for [`Source::sha256`].
    fn finish(&mut self) -> Option<Digest> {
        let digest = match std::mem::replace(self, Self::Done(None)) {
            Self::Inline(h) => Some(h.finalize().into()),
            Self::Threaded(HashThread { bytes, thread, .. }) => {
                drop(bytes); // ends the thread's loop
                thread.join().ok()
            }
            Self::Done(d) => d,
        };
        *self = Self::Done(digest);
        digest
    }

    fn digest(&self) -> Option<Digest> {
        match self {
            Self::Done(d) => *d,
            _ => None,
        }
    }
}

/// Whether a read hashes the file's bytes, and what they must hash to.
#[derive(Debug, Clone, Default)]
pub enum Sha256Check {
    /// Do not hash.
    #[default]
    Off,
    /// Hash, for [`Source::sha256`], without a digest to compare with.
    Compute,
    /// Hash and compare at the end of the read: a mismatch fails the read.
    Expect(Expected),
}

pub(crate) fn is_gzip_name(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gz"))
}

/// A table's decoded byte stream.
pub struct Source {
    chunks: async_channel::Receiver<io::Result<Vec<u8>>>,
    /// Chunks go back to the producer to be refilled.
    spare: async_channel::Sender<Vec<u8>>,
    /// Bytes of the input file consumed so far (compressed bytes for gzip).
    pub input_read: Arc<AtomicU64>,
    decoded: u64,
    hash: Option<Arc<Mutex<HashState>>>,
}

/// The end of a read is trusted only if the file is the one that was opened, whole: a file
/// truncated, appended to or rewritten while it was read must not be published in part.
struct ReadCheck {
    path: PathBuf,
    start: FileIdentity,
    input_read: Arc<AtomicU64>,
    hash: Option<Arc<Mutex<HashState>>>,
    expected: Option<Expected>,
}

impl ReadCheck {
    fn verify(&self) -> io::Result<()> {
        let read = self.input_read.load(Ordering::Relaxed);
        let now = FileIdentity::of_path(&self.path).ok_or(());
        let unchanged = now.as_ref().is_ok_and(|n| *n == self.start);
        if unchanged && read == self.start.size {
            return self.finish_hash();
        }
        let now_size = now.map_or_else(|_| "gone".to_string(), |n| format!("{} bytes", n.size));
        Err(io::Error::other(format!(
            "the file changed while it was being read ({} bytes at the start, {read} read, now {now_size}): not published",
            self.start.size
        )))
    }

    /// The whole file was read: its digest, compared with the listed one if there is one.
    fn finish_hash(&self) -> io::Result<()> {
        let Some(hash) = &self.hash else { return Ok(()) };
        let digest = hash.lock().unwrap_or_else(|e| e.into_inner()).finish();
        match (&self.expected, digest) {
            (Some(expected), Some(digest)) => expected.check(&digest),
            (Some(_), None) => Err(io::Error::other("the SHA-256 of the file could not be computed")),
            (None, _) => Ok(()),
        }
    }
}

impl Source {
    /// Opens `path` for reading on a thread of its own; `sha256` says whether its bytes are
    /// hashed as they are read and what they must hash to (checked with the rest of the end of
    /// the read: a mismatch is the read's last error).
    pub fn open(path: &Path, sha256: Sha256Check) -> io::Result<Self> {
        let file = crate::sys::open_regular(path)?;
        let start = FileIdentity::of(&file.metadata()?);
        let input_read = Arc::new(AtomicU64::new(0));
        let gzip = is_gzip_name(path);
        let inline = is_small(path, start.size);
        let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
        let (hash, expected) = match sha256 {
            Sha256Check::Off => (None, None),
            Sha256Check::Compute => (Some(HashState::new(!inline, &name)?), None),
            Sha256Check::Expect(e) => (Some(HashState::new(!inline, &name)?), Some(e)),
        };
        let check = ReadCheck {
            path: path.to_path_buf(),
            start,
            input_read: Arc::clone(&input_read),
            hash: hash.clone(),
            expected,
        };
        let counting = Counting { inner: file, read: Arc::clone(&input_read), hash: hash.clone() };
        // Room for every buffer in flight (decode queue, batch link, reader, writer).
        let (spare, spares) = async_channel::bounded(SPARE_BUFFERS);
        let chunks = if gzip {
            let decoder = crate::gzip::decoder(io::BufReader::with_capacity(CHUNK, counting))?;
            start_producer(check, decoder, spares, inline)?
        } else {
            start_producer(check, counting, spares, inline)?
        };
        Ok(Self { chunks, spare, input_read, decoded: 0, hash })
    }

    /// The SHA-256 of the file, once it was read to its end with hashing on.
    pub fn sha256(&self) -> Option<Digest> {
        self.hash.as_ref().and_then(|h| h.lock().unwrap_or_else(|e| e.into_inner()).digest())
    }

    /// Gives a used buffer back to the decode thread (dropped when it has enough).
    pub fn recycle(&self, buf: Vec<u8>) {
        if buf.capacity() >= CHUNK {
            let _ = self.spare.try_send(buf);
        }
    }

    /// Appends up to one chunk of decoded bytes to `buf`; returns 0 at the end of the input.
    pub fn fill(&mut self, buf: &mut Vec<u8>) -> Result<usize, SourceError> {
        match self.chunks.recv_blocking() {
            Ok(Ok(chunk)) => {
                let n = chunk.len();
                if buf.is_empty() {
                    // Chunks end at a line end, so nothing is usually left over from the last
                    // one: take this chunk as it is instead of copying it.
                    *buf = chunk;
                } else {
                    buf.extend_from_slice(&chunk);
                    self.recycle(chunk);
                }
                self.decoded += n as u64;
                Ok(n)
            }
            Ok(Err(cause)) => Err(SourceError {
                input_offset: self.input_read.load(Ordering::Relaxed),
                decoded_offset: self.decoded,
                cause,
            }),
            Err(_) => Ok(0), // the producer finished and closed the channel
        }
    }
}

/// Reads `reader` to its end, in chunks, into a channel: on a thread of its own into a bounded
/// channel, or (`inline`, for a small file) at once on this thread.
fn start_producer<R: Read + Send + 'static>(
    check: ReadCheck,
    reader: R,
    spares: async_channel::Receiver<Vec<u8>>,
    inline: bool,
) -> io::Result<async_channel::Receiver<io::Result<Vec<u8>>>> {
    if inline {
        let (tx, rx) = async_channel::unbounded();
        produce(check, reader, &spares, &tx, CHUNK.min(INLINE_MAX_BYTES as usize));
        return Ok(rx);
    }
    let (tx, rx) = async_channel::bounded(DECODE_QUEUE);
    let name = format!("read {}", check.path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default());
    std::thread::Builder::new().name(name).spawn(move || produce(check, reader, &spares, &tx, CHUNK))?;
    Ok(rx)
}

/// The producer's loop: chunks of `chunk_len` bytes ending at a line end, then the end-of-read
/// check (or the error).
fn produce<R: Read>(
    check: ReadCheck,
    mut reader: R,
    spares: &async_channel::Receiver<Vec<u8>>,
    tx: &async_channel::Sender<io::Result<Vec<u8>>>,
    chunk_len: usize,
) {
    {
        // What followed the last line feed of a full chunk starts the next one, so that chunks
        // hold whole lines (unless a line is longer than a chunk or a quoted field spans lines).
        let mut carry: Vec<u8> = Vec::new();
        loop {
            // A recycled buffer keeps its length, so this zeroes only bytes it never held.
            let mut chunk = spares.try_recv().unwrap_or_default();
            chunk.resize(chunk_len, 0);
            chunk[..carry.len()].copy_from_slice(&carry);
            let mut filled = carry.len();
            carry.clear();
            let status = loop {
                match reader.read(&mut chunk[filled..]) {
                    Ok(0) => break check.verify().map(|()| true),
                    Ok(n) => {
                        filled += n;
                        if filled == chunk.len() {
                            break Ok(false);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            if matches!(status, Ok(false)) {
                if let Some(last) = memchr::memrchr(b'\n', &chunk[..filled]) {
                    carry.extend_from_slice(&chunk[last + 1..filled]);
                    filled = last + 1;
                }
            }
            chunk.truncate(filled);
            if filled > 0 && tx.send_blocking(Ok(chunk)).is_err() {
                return; // the reader went away
            }
            match status {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => {
                    let _ = tx.send_blocking(Err(e));
                    return;
                }
            }
        }
    }
}
