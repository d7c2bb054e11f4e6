//! The typed messages that flow between the actors of a table job.

use std::fmt;

use crate::csvscan::Span;

/// Records travel in batches: one buffer of verbatim bytes plus where each record lies in it.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub data: Vec<u8>,
    pub records: Vec<Record>,
}

#[derive(Debug, Clone, Copy)]
pub struct Record {
    /// The record's verbatim bytes in `Batch::data`, without the line terminator.
    pub span: Span,
    /// The routing key field (subject_id, DICOM_ID…), quotes removed.
    pub key: Span,
    /// 0-based data-row number in the source table (the index column).
    pub row: u64,
    /// 1-based line number in the source file where the record starts.
    pub line: u64,
    /// Set when the record cannot be routed; the writer keeps it as a reject.
    pub defect: Option<Defect>,
}

/// Where a record came from in its source table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Origin {
    /// 0-based data-row number (the index column).
    pub row: u64,
    /// 1-based line where the record starts (a quoted newline makes it differ from `row + 2`).
    pub line: u64,
}

/// Why a record is rejected (or, for `Dropped`, deliberately left out by a fix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Defect {
    FieldCount {
        expected: u32,
        found: u32,
    },
    UnterminatedQuote,
    /// EyeGaze: a cut-short DICOM_ID whose full id is also in the table (the paper deletes it).
    ShortIdDuplicate,
    /// EyeGaze: a cut-short DICOM_ID with no valid candidate.
    ShortIdNoCandidate,
    /// EyeGaze: a cut-short DICOM_ID matching several valid ids.
    ShortIdAmbiguous,
    /// EyeGaze (profile release): a cut-short DICOM_ID whose full id is not present.
    ShortIdUnrepaired,
    /// A routing key that is not a subject_id (digits).
    UnroutableSubject(crate::ids::IdError),
    /// A routing key that is not a DICOM id (nor a cut-short or `_calibration` form of one).
    UnroutableDicom(crate::ids::IdError),
}

impl Defect {
    /// What kind of defect, without its details: what rejects are counted by.
    pub fn kind(self) -> DefectKind {
        match self {
            Defect::FieldCount { .. } => DefectKind::FieldCount,
            Defect::UnterminatedQuote => DefectKind::UnterminatedQuote,
            Defect::ShortIdDuplicate => DefectKind::ShortIdDuplicate,
            Defect::ShortIdNoCandidate => DefectKind::ShortIdNoCandidate,
            Defect::ShortIdAmbiguous => DefectKind::ShortIdAmbiguous,
            Defect::ShortIdUnrepaired => DefectKind::ShortIdUnrepaired,
            Defect::UnroutableSubject(_) => DefectKind::UnroutableSubject,
            Defect::UnroutableDicom(_) => DefectKind::UnroutableDicom,
        }
    }
}

/// A [`Defect`]'s kind: the key of the reject counts, shown by its stable label (the `reason`
/// metric label and summary.json's `rejects_by_reason` keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DefectKind {
    FieldCount,
    UnterminatedQuote,
    ShortIdDuplicate,
    ShortIdNoCandidate,
    ShortIdAmbiguous,
    ShortIdUnrepaired,
    UnroutableSubject,
    UnroutableDicom,
}

impl DefectKind {
    pub fn label(self) -> &'static str {
        match self {
            DefectKind::FieldCount => "field_count",
            DefectKind::UnterminatedQuote => "unterminated_quote",
            DefectKind::ShortIdDuplicate => "short_id_dropped",
            DefectKind::ShortIdNoCandidate => "short_id_no_candidate",
            DefectKind::ShortIdAmbiguous => "short_id_ambiguous",
            DefectKind::ShortIdUnrepaired => "short_id_unrepaired",
            DefectKind::UnroutableSubject => "bad_subject_id",
            DefectKind::UnroutableDicom => "bad_dicom_id",
        }
    }
}

impl serde::Serialize for DefectKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.label())
    }
}

impl fmt::Display for DefectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl fmt::Display for Defect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Defect::FieldCount { expected, found } => {
                write!(f, "wrong field count: expected {expected}, found {found}")
            }
            Defect::UnterminatedQuote => f.write_str("unterminated quote at end of file"),
            Defect::ShortIdDuplicate => f.write_str("truncated DICOM_ID whose full id is also present: row dropped"),
            Defect::ShortIdNoCandidate => f.write_str("truncated DICOM_ID matches no valid id"),
            Defect::ShortIdAmbiguous => f.write_str("truncated DICOM_ID matches several valid ids"),
            Defect::ShortIdUnrepaired => {
                f.write_str("truncated DICOM_ID whose full id is absent (profile release does not repair)")
            }
            Defect::UnroutableSubject(e) => write!(f, "unroutable subject_id: {e}"),
            Defect::UnroutableDicom(e) => write!(f, "unroutable DICOM id: {e}"),
        }
    }
}

/// Batches handed back by the writer for the reader to refill: buffers are allocated once per
/// job instead of once per batch on one thread and freed on another (glibc's per-thread arenas
/// turned that churn into tens of MiB of resident memory).
#[derive(Debug, Clone)]
pub(crate) struct BatchPool {
    tx: async_channel::Sender<Batch>,
    rx: async_channel::Receiver<Batch>,
}

impl BatchPool {
    pub(crate) fn new(capacity: usize) -> Self {
        let (tx, rx) = async_channel::bounded(capacity);
        Self { tx, rx }
    }

    /// A batch with no records, reusing a returned one when there is one. Its `data` is a used
    /// buffer (stale bytes, length kept) that the reader passes on to the decode thread.
    pub(crate) fn take(&self) -> Batch {
        self.rx.try_recv().unwrap_or_default()
    }

    /// Returns a batch for reuse (dropped when the pool is full). `data` keeps its length: the
    /// reader hands it back to the decode thread, which refills it without zeroing it first.
    pub(crate) fn give(&self, mut batch: Batch) {
        batch.records.clear();
        let _ = self.tx.try_send(batch);
    }
}

/// What the reader sends downstream. A job publishes only after `Done`.
#[derive(Debug)]
pub(crate) enum ReadMsg {
    Batch(Batch),
    Done(ReadStats),
    Failed(crate::pipeline::error::ReadError),
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ReadStats {
    pub input_bytes: u64,
}

/// How a reader's stream ended without its `Done`.
#[derive(Debug)]
pub(crate) enum Unfinished<E> {
    /// The reader failed, naming the file and where.
    Read(crate::pipeline::error::ReadError),
    /// The channel closed without `Done`: the reading thread stopped early (cancelled, or it
    /// panicked: its join says which). Never taken for the end of the table.
    Stopped,
    /// The consumer's own error, which stopped the draining.
    Consumer(E),
}

/// The reader's protocol, consumed in one place: every batch goes to `each` until `Done`,
/// which alone means the whole table was read. Dropping the receiver afterwards stops a reader
/// that is still sending.
pub(crate) fn drain<E>(
    rx: &async_channel::Receiver<ReadMsg>,
    mut each: impl FnMut(Batch) -> Result<(), E>,
) -> Result<ReadStats, Unfinished<E>> {
    while let Ok(msg) = rx.recv_blocking() {
        match msg {
            ReadMsg::Batch(b) => each(b).map_err(Unfinished::Consumer)?,
            ReadMsg::Done(stats) => return Ok(stats),
            ReadMsg::Failed(e) => return Err(Unfinished::Read(e)),
        }
    }
    Err(Unfinished::Stopped)
}

/// A small table's malformed records: the first [`Rejects::KEPT`] verbatim (for the rejects
/// file), the rest only counted, so a table of millions of broken rows costs no memory.
#[derive(Debug, Clone, Default)]
pub struct Rejects {
    pub kept: Vec<(Record, Vec<u8>)>,
    pub not_kept: u64,
}

impl Rejects {
    pub const KEPT: usize = 1000;

    pub(crate) fn push(&mut self, record: Record, raw: &[u8]) {
        if self.kept.len() < Self::KEPT {
            self.kept.push((record, raw.to_vec()));
        } else {
            self.not_kept += 1;
        }
    }

    pub fn total(&self) -> u64 {
        self.kept.len() as u64 + self.not_kept
    }

    pub fn extend(&mut self, other: &Rejects) {
        self.kept.extend(other.kept.iter().cloned());
        self.not_kept += other.not_kept;
    }
}

/// Builds a batch from in-memory rows so derived tables go through the same writer.
/// Each row is (where it came from, record bytes, key value).
pub(super) fn batch_of<'a>(rows: impl IntoIterator<Item = (Origin, Vec<u8>, &'a [u8])>) -> Batch {
    let mut batch = Batch::default();
    for (origin, record, key) in rows {
        push_record(&mut batch, origin, &record, key);
    }
    batch
}

/// Appends one in-memory row (record bytes and key value) to a batch.
pub(super) fn push_record(batch: &mut Batch, Origin { row, line }: Origin, record: &[u8], key: &[u8]) {
    let start = batch.data.len() as u32;
    batch.data.extend_from_slice(record);
    let end = batch.data.len() as u32;
    batch.data.extend_from_slice(key);
    let key_end = batch.data.len() as u32;
    batch.records.push(Record {
        span: Span { start, end },
        key: Span { start: end, end: key_end },
        row,
        line,
        defect: None,
    });
}

/// Appends records a small-table read rejected, so the writer keeps and counts them (those
/// only counted are added to the counts by `write_derived`).
pub(super) fn append_rejects(batch: &mut Batch, rejects: &Rejects) {
    for (record, raw) in &rejects.kept {
        let start = batch.data.len() as u32;
        batch.data.extend_from_slice(raw);
        let end = batch.data.len() as u32;
        batch.records.push(Record { span: Span { start, end }, key: Span { start: end, end }, ..*record });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_done_ends_a_read_and_a_closed_link_is_never_success() {
        let (tx, rx) = async_channel::unbounded();
        tx.send_blocking(ReadMsg::Batch(Batch::default())).unwrap();
        tx.send_blocking(ReadMsg::Done(ReadStats { input_bytes: 7 })).unwrap();
        let mut batches = 0;
        let stats = drain(&rx, |_| {
            batches += 1;
            Ok::<_, ()>(())
        })
        .unwrap();
        assert_eq!((batches, stats.input_bytes), (1, 7));
        // The reading thread gone after a batch, without `Done` (a panic, a stop).
        let (tx, rx) = async_channel::unbounded();
        tx.send_blocking(ReadMsg::Batch(Batch::default())).unwrap();
        drop(tx);
        assert!(matches!(drain(&rx, |_| Ok::<_, ()>(())), Err(Unfinished::Stopped)));
        // The consumer's error stops the draining and is returned as its own.
        let (tx, rx) = async_channel::unbounded();
        tx.send_blocking(ReadMsg::Batch(Batch::default())).unwrap();
        assert!(matches!(drain(&rx, |_| Err("full")), Err(Unfinished::Consumer("full"))));
    }
}
