//! The whole-table reader: a small table (the linker's: thousands of rows, not millions) read
//! and decoded at once, or any table visited record by record in bounded memory, through the
//! same [`TableReader`] the streaming jobs use.

use std::path::{Path, PathBuf};

use crate::csvscan::split_fields;
use crate::pipeline::batch::{self, BatchPool, Origin, Rejects};
use crate::pipeline::error::ReadError;
use crate::pipeline::reader::{Header, TableReader};
use crate::shutdown::CancelToken;
use crate::source::Sha256Check;

/// A small table read whole and decoded (the linker's tables: thousands of rows, not millions).
#[derive(Debug, Default, Clone)]
pub struct SmallTable {
    /// The file it was read from.
    pub path: PathBuf,
    pub(crate) header: Header,
    /// Its rows, with their line numbers.
    pub rows: Vec<SmallRow>,
    /// Records with a defect (wrong field count, unterminated quote).
    pub rejects: Rejects,
}

#[derive(Debug, Clone)]
pub struct SmallRow {
    pub row: u64,
    pub line: u64,
    /// The record's verbatim bytes.
    pub raw: Vec<u8>,
    pub fields: Fields,
}

/// A record's decoded fields in one buffer: a kept row costs two allocations, not one per
/// field (the REFLACX metadata and the master sheet are kept whole for the build).
#[derive(Debug, Clone, Default)]
pub struct Fields {
    bytes: Vec<u8>,
    /// Where each field ends in `bytes` (a record is at most 64 MiB: `u32` holds it).
    ends: Vec<u32>,
}

impl Fields {
    fn from_split(fields: &[Vec<u8>]) -> Self {
        let mut bytes = Vec::with_capacity(fields.iter().map(Vec::len).sum());
        let mut ends = Vec::with_capacity(fields.len());
        for f in fields {
            bytes.extend_from_slice(f);
            ends.push(bytes.len() as u32);
        }
        Self { bytes, ends }
    }

    /// Field `i`, if the record has it.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)? as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        Some(&self.bytes[start..end])
    }

    /// Field `i`, empty if the record has no such field.
    pub fn field(&self, i: usize) -> &[u8] {
        self.get(i).unwrap_or(&[])
    }

    /// The fields in order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.ends.len()).map(|i| self.field(i))
    }
}

impl SmallRow {
    pub fn origin(&self) -> Origin {
        Origin { row: self.row, line: self.line }
    }
}

impl SmallTable {
    /// Reads a whole small table (`.csv` or `.csv.gz`).
    pub fn read(path: &Path) -> Result<Self, ReadError> {
        Self::read_where(path, |_, _| true)
    }

    /// Streams the table and keeps only the rows `keep` accepts (given the header and the
    /// decoded fields), so a big table costs memory only for the rows that matter.
    pub fn read_where(path: &Path, keep: impl FnMut(&Header, &[Vec<u8>]) -> bool) -> Result<Self, ReadError> {
        Self::read_checked(path, Sha256Check::Off, &CancelToken::default(), keep)
    }

    /// [`Self::read_where`], hashing the file as it is read (see [`TableReader::open_checked`])
    /// and stopping when `cancel` is set.
    pub(crate) fn read_checked(
        path: &Path,
        sha256: Sha256Check,
        cancel: &CancelToken,
        mut keep: impl FnMut(&Header, &[Vec<u8>]) -> bool,
    ) -> Result<Self, ReadError> {
        let mut rows = Vec::new();
        let (header, rejects) = Self::visit(path, sha256, cancel, |header, origin, raw, fields| {
            if keep(header, fields) {
                let fields = Fields::from_split(fields);
                rows.push(SmallRow { row: origin.row, line: origin.line, raw: raw.to_vec(), fields });
            }
            Ok::<_, ReadError>(())
        })?;
        Ok(SmallTable { path: path.to_path_buf(), header, rows, rejects })
    }

    /// Streams the table's well-formed records to `each` (with the header, the record's
    /// origin, its verbatim bytes and its decoded fields) and returns the header and the
    /// malformed records: a table of any size read in bounded memory. An error from `each`
    /// stops the read, and so does `cancel`.
    pub(crate) fn visit<E: From<ReadError>>(
        path: &Path,
        sha256: Sha256Check,
        cancel: &CancelToken,
        mut each: impl FnMut(&Header, Origin, &[u8], &[Vec<u8>]) -> Result<(), E>,
    ) -> Result<(Header, Rejects), E> {
        let reader = TableReader::open_checked(path, sha256)?;
        let header = reader.header().clone();
        // A small file is read on this thread (its batches all fit in the channel); a big one
        // on a thread of its own, bounded, while this one keeps what it needs.
        let small = std::fs::metadata(path).is_ok_and(|m| crate::source::is_small(path, m.len()));
        let (tx, rx) = if small { async_channel::unbounded() } else { async_channel::bounded(4) };
        let token = cancel.clone();
        let handle = match small {
            true => {
                reader.stream_until(None, &tx, &token, &BatchPool::new(1));
                drop(tx);
                None
            }
            false => Some(std::thread::spawn(move || reader.stream_until(None, &tx, &token, &BatchPool::new(1)))),
        };
        let mut rejects = Rejects::default();
        let drained = batch::drain(&rx, |b| {
            for r in &b.records {
                let raw = r.span.slice(&b.data);
                if r.defect.is_some() {
                    rejects.push(*r, raw);
                    continue;
                }
                each(&header, Origin { row: r.row, line: r.line }, raw, &split_fields(raw))?;
            }
            Ok(())
        });
        // Dropping the receiver stops a reading thread that is still sending.
        drop(rx);
        let joined = handle.map_or(Ok(()), |h| h.join());
        match drained {
            Ok(_) => Ok((header, rejects)),
            Err(batch::Unfinished::Consumer(e)) => Err(e),
            Err(batch::Unfinished::Read(e)) => Err(e.into()),
            Err(batch::Unfinished::Stopped) => Err(ReadError::stopped(path, cancel, joined).into()),
        }
    }

    /// A column's index, or an error naming the file and the missing column.
    pub fn require(&self, column: &str) -> Result<usize, ReadError> {
        self.header.require(&self.path, column)
    }

    /// Malformed records, kept or only counted.
    pub fn rejected(&self) -> u64 {
        self.rejects.total()
    }
}
