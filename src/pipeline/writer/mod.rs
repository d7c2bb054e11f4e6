//! The writer actor: routes records to per-patient files under a job's staging folder.
//!
//! Memory is bounded by a budget on buffered bytes, not by the number of patients: each patient
//! has a pending buffer flushed in large writes, and when the buffers together pass the budget all
//! are flushed and released. Open files are kept in an LRU sized to the open-file limit, so a
//! shuffled table with thousands of patients neither reopens a file per row nor runs out of
//! descriptors. Nothing here is visible in the output until the job is published.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cohort::Cohort;
use crate::counts::TableCounts;
use crate::csvscan::write_field;
use crate::ids::{DicomId, IdBuildHasher, SubjectId};
use crate::pipeline::batch::{self, Batch, BatchPool, Defect, DefectKind, ReadMsg, Record};
use crate::pipeline::error::{At, JobError};
use crate::pipeline::paths;
use crate::telemetry;

/// A patient's pending bytes are written once they reach this size.
const PATIENT_FLUSH: usize = 64 << 10;
/// When all pending buffers together hold more than this, every one is flushed and released.
const BUFFER_BUDGET: usize = 8 << 20;

/// How a table's records find their destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    /// Every record to the whole-table file.
    Whole,
    /// By the key column as a `subject_id`.
    BySubject,
    /// By the key column as a `dicom_id`, through the cohort's dicom → subject map.
    ByDicom,
}

/// Everything a writer needs to know about its table job.
#[derive(Debug, Clone)]
pub(super) struct WriterSpec {
    /// `<dataset or module>/<table>`, e.g. `hosp/labevents`.
    pub table: String,
    pub source: PathBuf,
    pub header: Vec<u8>,
    pub index_column: bool,
    pub route: Route,
    /// Relative to each patient's folder, e.g. `Hosp/labevents.csv`.
    pub patient_file: Option<PathBuf>,
    /// Relative to the output root, e.g. `spreadsheets/Hosp/d_labitems.csv`.
    pub whole_file: Option<PathBuf>,
    pub cohort: Arc<Cohort>,
    /// The job's staging root: files are written at `<staging>/<relative output path>`.
    pub staging: PathBuf,
    pub max_open_files: usize,
    /// Write only these patients' files (the others are counted, not rewritten).
    pub only_patients: Option<Arc<std::collections::HashSet<SubjectId>>>,
}

#[derive(Debug, Default)]
pub struct WriterOutcome {
    pub counts: TableCounts,
    /// Staged files, relative to the output root.
    pub files: Vec<PathBuf>,
    pub rejects_by_reason: BTreeMap<DefectKind, u64>,
    pub input_bytes: u64,
    /// Rows per patient (every patient of the cohort seen, written or kept).
    pub per_patient: BTreeMap<u64, u64>,
    /// The planner found nothing changed: the table was not read (counts are the last build's).
    pub unchanged: bool,
}

/// Where the record of the previous key went: grouped tables repeat keys, so this skips lookups.
#[derive(Debug, Clone, Copy)]
enum Target {
    Patient(usize),
    Outside,
    Reject(Defect),
}

struct PatientFile {
    subject: SubjectId,
    rows: u64,
    /// False when this build keeps the patient's existing file.
    write: bool,
    buf: Vec<u8>,
    created: bool,
    open_slot: Option<usize>,
}

struct OpenFile {
    patient: usize,
    file: File,
    last_use: u64,
}

type IdMap<V> = HashMap<SubjectId, V, IdBuildHasher>;

pub(super) struct Writer {
    spec: WriterSpec,
    patients: Vec<PatientFile>,
    by_subject: IdMap<usize>,
    open: Vec<OpenFile>,
    clock: u64,
    buffered: usize,
    whole: Option<(PathBuf, BufWriter<File>)>,
    rejects: Option<(PathBuf, BufWriter<File>)>,
    outcome: WriterOutcome,
    last_key: Vec<u8>,
    last_target: Option<Target>,
    line: Vec<u8>,
}

impl Writer {
    pub(super) fn new(spec: WriterSpec) -> Result<Self, JobError> {
        fs::create_dir_all(&spec.staging).at(&spec.staging)?;
        let mut w = Self {
            spec,
            patients: Vec::new(),
            by_subject: IdMap::default(),
            open: Vec::new(),
            clock: 0,
            buffered: 0,
            whole: None,
            rejects: None,
            outcome: WriterOutcome::default(),
            last_key: Vec::with_capacity(64),
            last_target: None,
            line: Vec::with_capacity(4096),
        };
        if let Some(rel) = w.spec.whole_file.clone() {
            let path = paths::staged_path(&w.spec.staging, &rel);
            let mut file = create_file(&path)?;
            let header = header_line(&w.spec.header, w.spec.index_column);
            file.write_all(&header).at(&path)?;
            w.outcome.files.push(rel);
            w.whole = Some((path, file));
        }
        Ok(w)
    }

    /// Receives batches until the reader is done, then flushes everything.
    pub(super) fn run(
        mut self,
        rx: async_channel::Receiver<ReadMsg>,
        pool: &BatchPool,
    ) -> Result<WriterOutcome, JobError> {
        let table = self.spec.table.clone();
        let metrics = telemetry::TableMetrics::new(&table);
        let drained = batch::drain(&rx, |batch| {
            let before = self.outcome.counts;
            self.write_batch(&batch)?;
            pool.give(batch);
            metrics.add(&before, &self.outcome.counts);
            metrics.set_buffered(self.buffered, self.open.len());
            Ok(())
        });
        let stats = match drained {
            Ok(stats) => stats,
            Err(batch::Unfinished::Consumer(e)) => return Err(e),
            Err(batch::Unfinished::Read(e)) => return Err(e.into()),
            Err(batch::Unfinished::Stopped) => return Err(JobError::Interrupted(table)),
        };
        self.outcome.input_bytes = stats.input_bytes;
        metrics.add_bytes(stats.input_bytes);
        for (reason, n) in &self.outcome.rejects_by_reason {
            metrics.rejected(reason.label(), *n);
        }
        self.finish()
    }

    pub(super) fn write_batch(&mut self, batch: &Batch) -> Result<(), JobError> {
        for record in &batch.records {
            self.write_record(record, &batch.data)?;
        }
        Ok(())
    }

    fn write_record(&mut self, record: &Record, data: &[u8]) -> Result<(), JobError> {
        self.outcome.counts.read += 1;
        let raw = record.span.slice(data);
        if let Some(defect) = record.defect {
            return self.reject(record, raw, defect.kind(), &defect.to_string());
        }
        if self.spec.route == Route::Whole {
            self.write_whole(record.row, raw)?;
            self.outcome.counts.written += 1;
            return Ok(());
        }
        let key = record.key.slice(data);
        let target = match self.last_target {
            Some(t) if key == self.last_key.as_slice() => t,
            _ => {
                let t = self.resolve(key);
                self.last_key.clear();
                self.last_key.extend_from_slice(key);
                self.last_target = Some(t);
                t
            }
        };
        match target {
            Target::Reject(defect) => return self.reject(record, raw, defect.kind(), &defect.to_string()),
            Target::Outside => self.outcome.counts.outside_cohort += 1,
            Target::Patient(p) => {
                self.append_patient(p, record.row, raw)?;
                self.outcome.counts.written += 1;
            }
        }
        if self.whole.is_some() {
            self.write_whole(record.row, raw)?;
        }
        Ok(())
    }

    fn resolve(&mut self, key: &[u8]) -> Target {
        let subject = match self.spec.route {
            Route::BySubject => match SubjectId::parse(key) {
                Ok(s) if self.spec.cohort.contains(s) => s,
                Ok(_) => return Target::Outside,
                Err(e) => return Target::Reject(Defect::UnroutableSubject(e)),
            },
            Route::ByDicom => match DicomId::parse(key) {
                Ok(d) => match self.spec.cohort.subject_of_dicom(&d) {
                    Some(s) => s,
                    None => return Target::Outside,
                },
                // `<dicom_id>_calibration` and cut-short ids belong to no patient.
                Err(_) if key.len() > DicomId::LEN && DicomId::is_valid(&key[..DicomId::LEN]) => {
                    return Target::Outside
                }
                Err(_) if DicomId::is_valid_prefix(key) => return Target::Outside,
                Err(e) => return Target::Reject(Defect::UnroutableDicom(e)),
            },
            Route::Whole => return Target::Outside,
        };
        let next = self.patients.len();
        let index = *self.by_subject.entry(subject).or_insert(next);
        if index == next {
            let write = self.spec.only_patients.as_ref().is_none_or(|o| o.contains(&subject));
            self.patients.push(PatientFile {
                subject,
                rows: 0,
                write,
                buf: Vec::new(),
                created: false,
                open_slot: None,
            });
        }
        Target::Patient(index)
    }

    fn append_patient(&mut self, p: usize, row: u64, raw: &[u8]) -> Result<(), JobError> {
        let index_column = self.spec.index_column;
        let file = &mut self.patients[p];
        file.rows += 1;
        if !file.write {
            return Ok(());
        }
        let cap0 = file.buf.capacity();
        push_line(&mut file.buf, index_column, row, raw);
        self.buffered += file.buf.capacity() - cap0;
        if file.buf.len() >= PATIENT_FLUSH {
            self.flush_patient(p)?;
        }
        if self.buffered > BUFFER_BUDGET {
            self.flush_all(true)?;
        }
        Ok(())
    }

    fn flush_patient(&mut self, p: usize) -> Result<(), JobError> {
        if self.patients[p].buf.is_empty() {
            return Ok(());
        }
        let slot = self.open_for(p)?;
        let file = &mut self.patients[p];
        if let Err(e) = self.open[slot].file.write_all(&file.buf) {
            return Err(e).at(&self.staged_path(p));
        }
        self.patients[p].buf.clear();
        Ok(())
    }

    /// A patient's file, relative to the output root: built when needed rather than kept
    /// (two paths per patient were a third of the memory of a 65,000-patient split).
    fn patient_rel(&self, p: usize) -> PathBuf {
        let file = self.spec.patient_file.as_deref().unwrap_or(Path::new("table.csv"));
        PathBuf::from(self.patients[p].subject.folder()).join(file)
    }

    fn staged_path(&self, p: usize) -> PathBuf {
        paths::staged_path(&self.spec.staging, &self.patient_rel(p))
    }

    /// Flushes every pending buffer; with `release`, also gives their memory back.
    fn flush_all(&mut self, release: bool) -> Result<(), JobError> {
        for p in 0..self.patients.len() {
            self.flush_patient(p)?;
            if release {
                self.patients[p].buf = Vec::new();
            }
        }
        if release {
            self.buffered = 0;
        }
        Ok(())
    }

    /// The open-file slot of patient `p`, opening (and evicting the least recently used) as needed.
    fn open_for(&mut self, p: usize) -> Result<usize, JobError> {
        self.clock += 1;
        if let Some(slot) = self.patients[p].open_slot {
            self.open[slot].last_use = self.clock;
            return Ok(slot);
        }
        let path = self.staged_path(p);
        let file = if self.patients[p].created {
            OpenOptions::new().append(true).open(&path).at(&path)?
        } else {
            let mut f = File::create(&path).at(&path)?;
            f.write_all(&header_line(&self.spec.header, self.spec.index_column)).at(&path)?;
            self.patients[p].created = true;
            f
        };
        let entry = OpenFile { patient: p, file, last_use: self.clock };
        let slot = if self.open.len() < self.spec.max_open_files.max(1) {
            self.open.push(entry);
            self.open.len() - 1
        } else {
            let (victim, _) =
                self.open.iter().enumerate().min_by_key(|(_, o)| o.last_use).unwrap_or((0, &self.open[0]));
            let old = std::mem::replace(&mut self.open[victim], entry);
            self.patients[old.patient].open_slot = None;
            victim
        };
        self.patients[p].open_slot = Some(slot);
        Ok(slot)
    }

    fn write_whole(&mut self, row: u64, raw: &[u8]) -> Result<(), JobError> {
        if let Some((path, file)) = &mut self.whole {
            self.line.clear();
            push_line(&mut self.line, self.spec.index_column, row, raw);
            file.write_all(&self.line).at(path)?;
        }
        Ok(())
    }

    fn reject(&mut self, record: &Record, raw: &[u8], kind: DefectKind, reason: &str) -> Result<(), JobError> {
        self.outcome.counts.rejected += 1;
        *self.outcome.rejects_by_reason.entry(kind).or_default() += 1;
        tracing::debug!(table = %self.spec.table, line = record.line, reason, "row rejected");
        if self.rejects.is_none() {
            let rel = paths::rejects_path(&self.spec.table);
            let path = paths::staged_path(&self.spec.staging, &rel);
            let mut file = create_file(&path)?;
            file.write_all(b"source_file,line,row,reason,record\n").at(&path)?;
            self.outcome.files.push(rel);
            self.rejects = Some((path, file));
        }
        self.line.clear();
        write_field(&mut self.line, self.spec.source.to_string_lossy().as_bytes());
        self.line.push(b',');
        self.line.extend_from_slice(itoa::Buffer::new().format(record.line).as_bytes());
        self.line.push(b',');
        self.line.extend_from_slice(itoa::Buffer::new().format(record.row).as_bytes());
        self.line.push(b',');
        write_field(&mut self.line, reason.as_bytes());
        self.line.push(b',');
        write_field(&mut self.line, raw);
        self.line.push(b'\n');
        if let Some((path, file)) = &mut self.rejects {
            file.write_all(&self.line).at(path)?;
        }
        Ok(())
    }

    pub(super) fn finish(mut self) -> Result<WriterOutcome, JobError> {
        self.flush_all(true)?;
        self.open.clear(); // closes the files
        for p in 0..self.patients.len() {
            if self.patients[p].created {
                let rel = self.patient_rel(p);
                self.outcome.files.push(rel);
            }
            let file = &self.patients[p];
            self.outcome.per_patient.insert(file.subject.get(), file.rows);
        }
        for (path, file) in [self.whole.take(), self.rejects.take()].into_iter().flatten() {
            file.into_inner().map_err(|e| e.into_error()).at(&path)?;
        }
        self.outcome.files.sort();
        Ok(self.outcome)
    }
}

fn create_file(path: &Path) -> Result<BufWriter<File>, JobError> {
    let file = File::create(path).at(path)?;
    Ok(BufWriter::with_capacity(256 << 10, file))
}

/// The output header: the source header, after an empty index column name when enabled.
pub(super) fn header_line(header: &[u8], index_column: bool) -> Vec<u8> {
    let mut line = Vec::with_capacity(header.len() + 2);
    if index_column {
        line.push(b',');
    }
    line.extend_from_slice(header);
    line.push(b'\n');
    line
}

/// One output line: `<row>,<verbatim record>\n` (or just the record without the index column).
#[inline]
pub(super) fn push_line(out: &mut Vec<u8>, index_column: bool, row: u64, raw: &[u8]) {
    if index_column {
        out.extend_from_slice(itoa::Buffer::new().format(row).as_bytes());
        out.push(b',');
    }
    out.extend_from_slice(raw);
    out.push(b'\n');
}

#[cfg(test)]
mod tests;
