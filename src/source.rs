//! Opening an input table as a stream of decoded bytes.
//!
//! `.csv.gz` files are decoded on their own thread (every gzip member, with flate2's zlib-rs
//! backend) and handed over in chunks through a bounded channel, so decompression and record
//! scanning run on two cores at once. Plain `.csv` files are read directly by the caller.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use flate2::bufread::MultiGzDecoder;

/// Bytes handed over per chunk by the decode thread.
pub const CHUNK: usize = 1 << 20;
/// Chunks in flight between the decode thread and the scanner.
const DECODE_QUEUE: usize = 4;

/// A failure while reading the source: the cause and where it happened.
#[derive(Debug, thiserror::Error)]
#[error("{cause} (at input byte {input_offset}, decoded byte {decoded_offset})")]
pub struct SourceError {
    pub input_offset: u64,
    pub decoded_offset: u64,
    #[source]
    pub cause: io::Error,
}

/// Counts the bytes taken from the underlying file (the progress bar and error offsets use it).
struct Counting<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

pub fn is_gzip_name(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gz"))
}

/// A table's decoded byte stream.
pub struct Source {
    kind: Kind,
    /// Bytes of the input file consumed so far (compressed bytes for gzip).
    pub input_read: Arc<AtomicU64>,
    decoded: u64,
}

enum Kind {
    Plain(Counting<File>),
    Gzip(async_channel::Receiver<io::Result<Vec<u8>>>),
}

impl Source {
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let input_read = Arc::new(AtomicU64::new(0));
        let counting = Counting { inner: file, read: Arc::clone(&input_read) };
        let kind = if is_gzip_name(path) {
            Kind::Gzip(spawn_decoder(path.to_path_buf(), counting)?)
        } else {
            Kind::Plain(counting)
        };
        Ok(Self { kind, input_read, decoded: 0 })
    }

    /// Appends up to one chunk of decoded bytes to `buf`; returns 0 at the end of the input.
    pub fn fill(&mut self, buf: &mut Vec<u8>) -> Result<usize, SourceError> {
        let result = match &mut self.kind {
            Kind::Plain(file) => {
                let old = buf.len();
                buf.resize(old + CHUNK, 0);
                let r = loop {
                    match file.read(&mut buf[old..]) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        r => break r,
                    }
                };
                buf.truncate(old + *r.as_ref().unwrap_or(&0));
                r
            }
            Kind::Gzip(chunks) => match chunks.recv_blocking() {
                Ok(Ok(chunk)) => {
                    buf.extend_from_slice(&chunk);
                    Ok(chunk.len())
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Ok(0), // the decoder finished and closed the channel
            },
        };
        match result {
            Ok(n) => {
                self.decoded += n as u64;
                Ok(n)
            }
            Err(cause) => Err(SourceError {
                input_offset: self.input_read.load(Ordering::Relaxed),
                decoded_offset: self.decoded,
                cause,
            }),
        }
    }
}

fn spawn_decoder(path: PathBuf, file: Counting<File>) -> io::Result<async_channel::Receiver<io::Result<Vec<u8>>>> {
    let (tx, rx) = async_channel::bounded(DECODE_QUEUE);
    let name = format!("gunzip {}", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default());
    std::thread::Builder::new().name(name).spawn(move || {
        let mut decoder = MultiGzDecoder::new(io::BufReader::with_capacity(256 << 10, file));
        loop {
            let mut chunk = vec![0u8; CHUNK];
            let mut filled = 0;
            let status = loop {
                match decoder.read(&mut chunk[filled..]) {
                    Ok(0) => break Ok(true),
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
    })?;
    Ok(rx)
}
