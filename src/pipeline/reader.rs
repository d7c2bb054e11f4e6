//! The reader actor: streams one table from its file as batches of verbatim records.
//!
//! It runs on a blocking thread (decoding and scanning are CPU-bound), extracts only the routing
//! key of each record, and sends batches of about one chunk (256 KiB, about 2,000 records) down a
//! bounded channel, so memory stays constant whatever the size of the table.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::csvscan::{split_fields, Scanner};
use crate::pipeline::batch::{Batch, BatchPool, Defect, ReadMsg, ReadStats, Record};
use crate::pipeline::error::{ReadError, ReadErrorKind};
use crate::shutdown::CancelToken;
use crate::source::{Sha256Check, Source, CHUNK};

/// Room reserved for a batch's records: a chunk of typical rows (60–200 bytes) fits, and shorter
/// rows grow the vector once, after which the pooled batch keeps its capacity.
const RECORDS_PER_BATCH: usize = CHUNK / 64;

/// A record longer than this is taken as a broken file rather than buffered without end.
const MAX_RECORD: usize = 64 << 20;
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The header line: verbatim bytes (BOM removed) and the decoded column names.
#[derive(Debug, Clone, Default)]
pub struct Header {
    pub raw: Vec<u8>,
    pub names: Vec<String>,
}

impl Header {
    /// The index of a column, matched by name case-insensitively.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n.trim().eq_ignore_ascii_case(name))
    }

    /// Like `find`, but a missing or repeated column is an error naming the file and the
    /// column (a repeated key column would route rows by whichever copy came first).
    pub fn require(&self, path: &Path, column: &str) -> Result<usize, ReadError> {
        let err = |kind| ReadError { path: path.to_path_buf(), kind };
        let (column, fields) = (column.to_string(), self.names.len());
        let count = self.names.iter().filter(|n| n.trim().eq_ignore_ascii_case(&column)).count();
        match self.find(&column) {
            Some(_) if count > 1 => Err(err(ReadErrorKind::DuplicateColumn { column, count })),
            Some(i) => Ok(i),
            None if self.looks_like_header() => Err(err(ReadErrorKind::MissingColumn { column, fields })),
            None => Err(err(ReadErrorKind::NoHeader { column, fields })),
        }
    }

    /// Every name starts with a letter or `_` and is short: data rows of these tables start
    /// with ids, times or numbers.
    fn looks_like_header(&self) -> bool {
        self.names.iter().all(|n| {
            let n = n.trim();
            n.len() <= 64 && n.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        })
    }
}

/// An opened table, positioned after its header line.
pub(crate) struct TableReader {
    path: PathBuf,
    source: Source,
    work: Vec<u8>,
    eof: bool,
    next_line: u64,
    header: Header,
}

impl TableReader {
    pub(crate) fn open(path: &Path) -> Result<Self, ReadError> {
        Self::open_checked(path, Sha256Check::Off)
    }

    /// Opens `path`, hashing its bytes as they are read when `sha256` asks for it (a digest
    /// that differs from the listed one fails the read at its end).
    pub(crate) fn open_checked(path: &Path, sha256: Sha256Check) -> Result<Self, ReadError> {
        let err = |kind| ReadError { path: path.to_path_buf(), kind };
        let source = Source::open(path, sha256).map_err(|e| err(ReadErrorKind::Open(e)))?;
        let mut reader = Self {
            path: path.to_path_buf(),
            source,
            work: Vec::new(),
            eof: false,
            next_line: 1,
            header: Header::default(),
        };
        reader.read_header()?;
        Ok(reader)
    }

    pub(crate) fn header(&self) -> &Header {
        &self.header
    }

    /// Bytes of the input file consumed so far (for progress bars).
    pub(crate) fn progress_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.source.input_read)
    }

    /// A required column's index, or an error naming the file, the column and the header.
    pub(crate) fn require(&self, column: &str) -> Result<usize, ReadError> {
        self.header.require(&self.path, column)
    }

    fn error(&self, kind: ReadErrorKind) -> ReadError {
        ReadError { path: self.path.clone(), kind }
    }

    fn fill(&mut self) -> Result<(), ReadError> {
        match self.source.fill(&mut self.work) {
            Ok(0) => {
                self.eof = true;
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) => Err(self.error(ReadErrorKind::Decode(e))),
        }
    }

    /// Finds the header line in one pass over the bytes as they arrive (a first line that never
    /// ends, such as a file of quotes or gigabytes without a line feed, is looked at once and
    /// fails at [`MAX_RECORD`] bytes), and fails at once on a NUL byte, which no header holds.
    fn read_header(&mut self) -> Result<(), ReadError> {
        let mut searched = 0;
        let mut in_quotes = false;
        loop {
            let fresh = &self.work[searched..];
            let end = record_end(fresh, &mut in_quotes).map(|p| searched + p);
            let nul = fresh[..end.map_or(fresh.len(), |e| e - searched)].contains(&0);
            if nul {
                return Err(self.error(ReadErrorKind::NotCsv));
            }
            let (record_len, consumed) = match end {
                Some(lf) => (lf, lf + 1),
                None if self.eof && !self.work.is_empty() => (self.work.len(), self.work.len()),
                None if self.eof => return Err(self.error(ReadErrorKind::Empty)),
                None => {
                    searched = self.work.len();
                    if searched > MAX_RECORD {
                        return Err(self.error(ReadErrorKind::RecordTooLong { line: self.next_line, max: MAX_RECORD }));
                    }
                    self.fill()?;
                    continue;
                }
            };
            let mut raw = self.work[..record_len].to_vec();
            self.work.drain(..consumed);
            (searched, in_quotes) = (0, false);
            self.next_line += 1 + raw.iter().filter(|&&b| b == b'\n').count() as u64;
            if raw.last() == Some(&b'\r') {
                raw.pop();
            }
            if raw.starts_with(BOM) {
                raw.drain(..BOM.len());
            }
            if raw.is_empty() {
                continue; // a blank line before the header
            }
            let names = split_fields(&raw).iter().map(|f| String::from_utf8_lossy(f).into_owned()).collect();
            self.header = Header { raw, names };
            return Ok(());
        }
    }

    /// Streams every data record to `tx` in batches; ends with `Done` or `Failed`, or stops
    /// (without `Done`) as soon as `cancel` is set or the receiver is dropped.
    pub(crate) fn stream_until(
        mut self,
        key_col: Option<usize>,
        tx: &async_channel::Sender<ReadMsg>,
        cancel: &CancelToken,
        pool: &BatchPool,
    ) {
        let msg = match self.stream_batches(key_col, tx, cancel, pool) {
            Ok(Some(stats)) => ReadMsg::Done(stats),
            Ok(None) => return,
            Err(e) => ReadMsg::Failed(e),
        };
        let _ = tx.send_blocking(msg);
    }

    fn stream_batches(
        &mut self,
        key_col: Option<usize>,
        tx: &async_channel::Sender<ReadMsg>,
        cancel: &CancelToken,
        pool: &BatchPool,
    ) -> Result<Option<ReadStats>, ReadError> {
        let scanner = Scanner::new(key_col);
        let expected = self.header.names.len() as u32;
        let mut row: u64 = 0;
        let mut records: Vec<Record> = Vec::with_capacity(RECORDS_PER_BATCH);
        // A record longer than the buffer (a quote never closed, megabytes without a line feed)
        // is scanned again from its start once more input comes: scanning only when the buffer
        // has doubled since the last try keeps the work linear (rescanning it at every 256 KiB
        // chunk is quadratic in the record's length).
        let mut rescan_at = 0;
        loop {
            if cancel.is_cancelled() {
                return Ok(None);
            }
            if !self.eof {
                self.fill()?;
                if self.work.len() < rescan_at && !self.eof {
                    continue;
                }
            }
            let mut line = self.next_line;
            let consumed = scanner.scan(&self.work, self.eof, |r| {
                let start_line = line;
                line += 1 + u64::from(r.newlines);
                if r.span.is_empty() && r.fields == 1 {
                    return; // blank line: no data
                }
                let defect = if r.unterminated {
                    Some(Defect::UnterminatedQuote)
                } else if r.fields != expected {
                    Some(Defect::FieldCount { expected, found: r.fields })
                } else {
                    None
                };
                records.push(Record { span: r.span, key: r.key, row, line: start_line, defect });
                row += 1;
            });
            self.next_line = line;
            if consumed > 0 || self.eof {
                // Hand the complete records over with their buffer; keep the partial tail.
                if !records.is_empty() {
                    let mut next = pool.take();
                    // The batch takes the buffer; the partial record left at its end (rare: chunks
                    // end at line ends) moves to a new one, and a used buffer goes back to the
                    // decode thread to be refilled.
                    let tail = &self.work[consumed..];
                    let rest = if tail.is_empty() { Vec::new() } else { tail_buffer(tail) };
                    let mut data = std::mem::replace(&mut self.work, rest);
                    data.truncate(consumed);
                    self.source.recycle(std::mem::take(&mut next.data));
                    let batch = Batch { data, records: std::mem::replace(&mut records, next.records) };
                    records.reserve(RECORDS_PER_BATCH);
                    if tx.send_blocking(ReadMsg::Batch(batch)).is_err() {
                        return Ok(None);
                    }
                } else {
                    self.work.drain(..consumed);
                }
            } else if self.work.len() > MAX_RECORD {
                return Err(self.error(ReadErrorKind::RecordTooLong { line, max: MAX_RECORD }));
            }
            rescan_at = match consumed {
                0 => (self.work.len() * 2).min(MAX_RECORD + 1),
                _ => 0,
            };
            if self.eof && self.work.is_empty() {
                return Ok(Some(ReadStats { input_bytes: self.source.input_read.load(Ordering::Relaxed) }));
            }
        }
    }
}

/// The offset of the line feed that ends the first record of `bytes`, carrying the quote state
/// across calls so each byte is looked at once (a doubled quote toggles twice).
fn record_end(bytes: &[u8], in_quotes: &mut bool) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = memchr::memchr2(b'"', b'\n', &bytes[from..]).map(|i| from + i) {
        if bytes[i] == b'"' {
            *in_quotes = !*in_quotes;
        } else if !*in_quotes {
            return Some(i);
        }
        from = i + 1;
    }
    None
}

/// A buffer starting with `tail`, with room for the next chunk.
fn tail_buffer(tail: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(tail.len() + CHUNK);
    buf.extend_from_slice(tail);
    buf
}
