//! One table job's topology: reader → [fixer] → writer → publish, each actor on its own
//! blocking thread, linked by bounded channels of batches.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cohort::Cohort;
use crate::config::Config;
use crate::ids::SubjectId;
use crate::input::{self, Module};
use crate::pipeline::batch::{self, ReadMsg};
use crate::pipeline::context::{raise_open_file_limit, BuildContext};
use crate::pipeline::error::JobError;
use crate::pipeline::fixer::FixKind;
use crate::pipeline::jobs::{routing_for, JobKind, Routing, TableJob};
use crate::pipeline::linker::Links;
use crate::pipeline::paths;
use crate::pipeline::planner;
use crate::pipeline::publish;
use crate::pipeline::reader::TableReader;
use crate::pipeline::staging::Staging;
use crate::pipeline::state::{self, Manifest, ManifestHead};
use crate::pipeline::writer::{Route, Writer, WriterOutcome, WriterSpec};
use crate::progress::ProgressBars;
use crate::shutdown::CancelToken;

/// Batches in flight on each link between actors (memory: capacity × about 512 KiB).
pub(super) const LINK_CAPACITY: usize = 4;

/// Runs one table job end to end and publishes it. The previous output stays on failure.
pub(super) async fn run_table_job(ctx: Arc<BuildContext>, job: TableJob) -> Result<WriterOutcome, JobError> {
    let started = Instant::now();
    let reader = open_reader(&ctx, &job).await?;
    let (decision, routing) = decide(&ctx, &job, &reader)?;
    let (only_patients, kept_files) = match decision.work {
        Work::Skip(outcome) => {
            ctx.progress.unchanged(file_len(&job.path));
            return Ok(outcome);
        }
        Work::Write { only_patients, kept } => (only_patients, kept),
    };
    let header_columns = reader.header().names.len();
    let staging = Staging::fresh(&ctx.config.output, &ctx.dirs, &job.key)?;
    let spec = writer_spec(&ctx, &job, &reader, &routing, only_patients, staging.dir());

    // The topology: reader → [fixer] → writer, each actor on a blocking thread, and a ticker
    // that reports the job's progress and the links' depths.
    let bar = ctx.progress.table(&job.key, file_len(&job.path));
    let counter = reader.progress_counter();
    let pool = batch::BatchPool::new(LINK_CAPACITY + 2); // batches circulate back to the reader
    let (tx, rx) = async_channel::bounded::<ReadMsg>(LINK_CAPACITY);
    let mut probes = vec![("reader->writer", tx.downgrade())];
    let read_task = spawn_reader(reader, routing.key_column, tx, &ctx.cancel, pool.clone());
    let (rx, fix_task) = match routing.fix {
        Some(fix) => {
            let fixer = spawn_fixer(&ctx, &job, fix, rx).await?;
            probes = vec![("reader->fixer", probes.remove(0).1), ("fixer->writer", fixer.probe)];
            (fixer.to_writer, Some(fixer.task))
        }
        None => (rx, None),
    };
    let alive = ctx.cancel.clone();
    let write_task = tokio::task::spawn_blocking(move || {
        let _alive = alive;
        Writer::new(spec)?.run(rx, &pool)
    });
    let ticker = spawn_ticker(&job, bar, counter, probes);

    let outcome = write_task.await.map_err(|e| JobError::joined("writer", &job.key, e));
    ticker.abort();
    crate::telemetry::update_status(|s| {
        s.tables.remove(&job.key);
    });
    // Every actor is joined: a reader or fixer that panicked is reported as that panic.
    let mut outcome = match outcome? {
        Err(JobError::Interrupted(_)) => return Err(upstream_cause(&job.key, read_task, fix_task, &ctx.cancel).await),
        other => {
            let _ = read_task.await;
            if let Some(f) = fix_task {
                let _ = f.await;
            }
            other?
        }
    };
    check_header_fits(&job, header_columns, &outcome)?;
    if !ctx.accept_shrink {
        check_not_shrunk(&job, decision.rows_before, &outcome)?;
    }
    outcome.files.extend(kept_files);
    outcome.files.sort();
    outcome.files.dedup();
    publish_job(&ctx, &job, staging, decision.input, decision.split, &mut outcome).await?;
    tracing::info!(
        table = %job.key, read = outcome.counts.read, written = outcome.counts.written,
        outside = outcome.counts.outside_cohort, rejected = outcome.counts.rejected,
        seconds = started.elapsed().as_secs_f64(), "table published"
    );
    Ok(outcome)
}

/// What this build does with a table, decided from the last manifest of its job.
struct Decision {
    /// The input fingerprint and settings, recorded in the manifest for the next build.
    input: planner::InputKey,
    split: bool,
    work: Work,
    /// Rows the last publish of this table read (the shrink guard compares).
    rows_before: Option<u64>,
}

enum Work {
    /// Unchanged: the last publish stands, with its counts.
    Skip(WriterOutcome),
    /// Write every patient, or `only_patients` (the cohort grew), keeping `kept` files as they are.
    Write { only_patients: Option<Arc<HashSet<SubjectId>>>, kept: Vec<PathBuf> },
}

async fn open_reader(ctx: &BuildContext, job: &TableJob) -> Result<TableReader, JobError> {
    let path = job.path.clone();
    let sha256 = ctx.integrity.table_check(&path);
    tokio::task::spawn_blocking(move || TableReader::open_checked(&path, sha256))
        .await
        .map_err(|e| JobError::joined("reader", &job.key, e))?
        .map_err(JobError::from)
}

fn decide(ctx: &BuildContext, job: &TableJob, reader: &TableReader) -> Result<(Decision, Routing), JobError> {
    // Read even with --full: it says whether this table was split per patient before. Its
    // head only: an unchanged table is skipped without loading a path per patient.
    let last = state::load_manifest_head(&ctx.config.output, &job.key);
    let split_before = last.as_ref().is_some_and(ManifestHead::was_split);
    let routing = routing_for(job, reader, ctx.config.profile, split_before)?;
    let dicoms = (routing.route == Route::ByDicom).then_some(&*ctx.cohort);
    let input = planner::InputKey::new(&ctx.config, &job.path, dicoms);
    let rows_before = last.as_ref().map(|m| m.counts.read);
    let previous = if ctx.force_full { None } else { last };
    let split = routing.route == Route::BySubject;
    let work = match (planner::decide(previous.as_ref(), &input, &ctx.cohort, split), previous) {
        (planner::Action::Skip, Some(prev)) => {
            tracing::debug!(table = %job.key, "unchanged: skipped");
            Work::Skip(WriterOutcome { counts: prev.counts, unchanged: true, ..Default::default() })
        }
        (planner::Action::Patients { added, removed }, Some(_)) => {
            tracing::info!(table = %job.key, added = added.len(), removed = removed.len(), "cohort changed: writing new patients only");
            // Keep the files of patients still in the cohort; drop those of patients who left.
            let gone: Vec<String> = removed.iter().map(|s| s.folder()).collect();
            let files = state::load_manifest(&ctx.config.output, &job.key).map(|m| m.files).unwrap_or_default();
            let kept = files.into_iter().filter(|f| !gone.iter().any(|g| f.starts_with(g))).collect();
            Work::Write { only_patients: Some(Arc::new(added.into_iter().collect())), kept }
        }
        _ => Work::Write { only_patients: None, kept: Vec::new() },
    };
    Ok((Decision { input, split, work, rows_before }, routing))
}

fn writer_spec(
    ctx: &BuildContext,
    job: &TableJob,
    reader: &TableReader,
    routing: &Routing,
    only_patients: Option<Arc<HashSet<SubjectId>>>,
    staging: &std::path::Path,
) -> WriterSpec {
    WriterSpec {
        table: job.key.clone(),
        source: job.path.clone(),
        header: reader.header().raw.clone(),
        index_column: ctx.config.index_column,
        route: routing.route,
        patient_file: routing.patient_file.clone(),
        // A patients-only pass leaves the whole-table file (same input) as it is.
        whole_file: if only_patients.is_some() { None } else { routing.whole_file.clone() },
        cohort: Arc::clone(&ctx.cohort),
        staging: staging.to_path_buf(),
        max_open_files: ctx.max_open_files,
        only_patients,
    }
}

type ReaderTask = tokio::task::JoinHandle<()>;

fn spawn_reader(
    reader: TableReader,
    key_column: Option<usize>,
    tx: async_channel::Sender<ReadMsg>,
    cancel: &CancelToken,
    pool: batch::BatchPool,
) -> ReaderTask {
    let cancel = cancel.clone();
    tokio::task::spawn_blocking(move || reader.stream_until(key_column, &tx, &cancel, &pool))
}

/// A link's name and a weak sender on it: the probe must not keep the link open when an actor
/// ends.
type Probe = (&'static str, async_channel::WeakSender<ReadMsg>);

/// The fixer's thread, its link to the writer and the probes of both links.
struct SpawnedFixer {
    task: tokio::task::JoinHandle<()>,
    to_writer: async_channel::Receiver<ReadMsg>,
    probe: async_channel::WeakSender<ReadMsg>,
}

/// Makes the fix's decisions (a first pass over the table), then starts the fixer between the
/// reader's link and a new one to the writer.
async fn spawn_fixer(
    ctx: &BuildContext,
    job: &TableJob,
    fix: FixKind,
    from_reader: async_channel::Receiver<ReadMsg>,
) -> Result<SpawnedFixer, JobError> {
    let (path, links, cancel) = (job.path.clone(), Arc::clone(&ctx.links), ctx.cancel.clone());
    let fix = tokio::task::spawn_blocking(move || fix.prepare(&path, &links, &cancel))
        .await
        .map_err(|e| JobError::joined("fixer", &job.key, e))??;
    let (tx, rx) = async_channel::bounded::<ReadMsg>(LINK_CAPACITY);
    let probe = tx.downgrade();
    let alive = ctx.cancel.clone();
    let task = tokio::task::spawn_blocking(move || {
        let _alive = alive;
        fix.run(from_reader, tx)
    });
    Ok(SpawnedFixer { task, to_writer: rx, probe })
}

/// Why the writer saw its input end without `Done`: the reader's or the fixer's panic, or a
/// stop, said as such (the writer alone would only know that its link closed early).
async fn upstream_cause(
    key: &str,
    reader: ReaderTask,
    fixer: Option<tokio::task::JoinHandle<()>>,
    cancel: &CancelToken,
) -> JobError {
    if let Err(e) = reader.await {
        return JobError::joined("reader", key, e);
    }
    if let Some(Err(e)) = match fixer {
        Some(f) => Some(f.await),
        None => None,
    } {
        return JobError::joined("fixer", key, e);
    }
    if cancel.is_cancelled() {
        return JobError::Cancelled;
    }
    JobError::Interrupted(key.to_string())
}

/// Every 200 ms: the progress bar, the progress and link-depth gauges and `/status`.
fn spawn_ticker(
    job: &TableJob,
    mut bar: crate::progress::TableBar,
    counter: Arc<std::sync::atomic::AtomicU64>,
    probes: Vec<Probe>,
) -> tokio::task::JoinHandle<()> {
    let key = job.key.clone();
    let total = file_len(&job.path);
    let progress = metrics::gauge!(crate::telemetry::TABLE_PROGRESS, "table" => key.clone());
    let probes: Vec<_> = probes
        .into_iter()
        .map(|(name, weak)| {
            metrics::gauge!(crate::telemetry::CHANNEL_CAPACITY, "link" => name).set(LINK_CAPACITY as f64);
            (metrics::gauge!(crate::telemetry::CHANNEL_DEPTH, "table" => key.clone(), "link" => name), weak)
        })
        .collect();
    tokio::spawn(async move {
        loop {
            let done = counter.load(Ordering::Relaxed);
            bar.set_position(done);
            progress.set(if total > 0 { done as f64 / total as f64 } else { 0.0 });
            for (gauge, weak) in &probes {
                gauge.set(weak.upgrade().map_or(0, |tx| tx.len()) as f64);
            }
            crate::telemetry::update_status(|s| {
                s.tables.insert(key.clone(), crate::telemetry::Progress { bytes_done: done, bytes_total: total });
            });
            tokio::time::sleep(TICK).await;
        }
    })
}

/// How often a running job's progress is reported.
const TICK: Duration = Duration::from_millis(200);

fn file_len(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Most rows not fitting the header means it was cut short or extended: publishing would
/// replace every patient's file with nothing. The table fails; its previous output stays.
fn check_header_fits(job: &TableJob, columns: usize, outcome: &WriterOutcome) -> Result<(), JobError> {
    let field_count_rejects = outcome.rejects_by_reason.get(&batch::DefectKind::FieldCount).copied().unwrap_or(0);
    if field_count_rejects * 2 > outcome.counts.read {
        return Err(JobError::HeaderMismatch { path: job.path.clone(), columns, rows: outcome.counts.read });
    }
    Ok(())
}

/// A table that lost most of its rows since its last publish (a header-only re-download, a
/// file of CRs that parses as one header line) is held back: publishing would delete most
/// patients' files. `build --accept-shrink` publishes it.
fn check_not_shrunk(job: &TableJob, before: Option<u64>, outcome: &WriterOutcome) -> Result<(), JobError> {
    let now = outcome.counts.read;
    match before {
        Some(before) if before > 0 && now.saturating_mul(2) < before => {
            Err(JobError::Shrunk { path: job.path.clone(), before, now })
        }
        _ => Ok(()),
    }
}

async fn publish_job(
    ctx: &BuildContext,
    job: &TableJob,
    staging: Staging,
    input: planner::InputKey,
    split: bool,
    outcome: &mut WriterOutcome,
) -> Result<(), JobError> {
    // The file list and row counts move into the manifest (a copy of each was a fifth of a
    // 65,000-patient split's memory); the outcome keeps its counts.
    let manifest = Manifest {
        job: job.key.clone(),
        split,
        files: std::mem::take(&mut outcome.files),
        counts: outcome.counts,
        input,
        cohort: planner::cohort_list(&ctx.cohort),
        per_patient: std::mem::take(&mut outcome.per_patient),
        copies: Default::default(),
        file_list: None,
    };
    tokio::task::spawn_blocking(move || staging.publish(manifest))
        .await
        .map_err(|e| JobError::joined("publish", &job.key, e))?
}

/// Splits one table by `subject_id` for a cohort, through the same table job as a build
/// (`<output>/patient_<sid>/Hosp/<table>.csv`). Used by `mimic-eye split` and the benchmarks.
pub async fn split_one(config: Config, table: PathBuf, cohort: Cohort) -> anyhow::Result<WriterOutcome> {
    let name =
        input::table_name(&table).with_context(|| format!("{} is not a .csv or .csv.gz table", table.display()))?;
    std::fs::create_dir_all(paths::state_dir(&config.output))?;
    publish::recover(&config.output)?;
    let ctx = Arc::new(BuildContext {
        cohort: Arc::new(cohort),
        links: Arc::new(Links::default()),
        link_digest: None,
        config,
        progress: ProgressBars::on_terminal(),
        max_open_files: raise_open_file_limit(),
        cancel: CancelToken::default(),
        force_full: true,
        accept_shrink: true,
        reflacx_phases: Vec::new(),
        master_sheet: None,
        integrity: Default::default(),
        dirs: Arc::default(),
    });
    let job =
        TableJob { key: format!("hosp/{name}"), path: table, kind: JobKind::Clinical { module: Module::Hosp, name } };
    Ok(run_table_job(ctx, job).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigFile;
    use crate::config::Overrides;

    /// One job wired end to end without the binary: reader → writer → publish through
    /// `split_one`, rows to their patients in source order, outsiders counted, a bad row kept
    /// as a reject, the staging folder gone, the manifest recorded.
    #[test]
    fn a_table_job_routes_counts_rejects_and_publishes() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in");
        std::fs::create_dir_all(&input).unwrap();
        let table = input.join("labevents.csv");
        let rows = "labevent_id,subject_id,value\n1,11,a\n2,12,\"b,c\"\n3,99,d\n4,11,e\n5,12\n6,11,f\n";
        std::fs::write(&table, rows).unwrap();
        let output = dir.path().join("out");
        let overrides = Overrides { input: Some(input), output: Some(output.clone()), ..Default::default() };
        let config = Config::resolve(ConfigFile::default(), overrides).unwrap();
        let cohort = Cohort::from_subjects([11, 12].map(|s| SubjectId::parse(s.to_string().as_bytes()).unwrap()));
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let outcome = runtime.block_on(split_one(config, table, cohort)).unwrap();
        let c = outcome.counts;
        assert_eq!((c.read, c.written, c.outside_cohort, c.rejected), (6, 4, 1, 1));
        let read = |rel: &str| std::fs::read_to_string(output.join(rel)).unwrap();
        assert_eq!(
            read("patient_11/Hosp/labevents.csv"),
            ",labevent_id,subject_id,value\n0,1,11,a\n3,4,11,e\n5,6,11,f\n"
        );
        assert_eq!(read("patient_12/Hosp/labevents.csv"), ",labevent_id,subject_id,value\n1,2,12,\"b,c\"\n");
        assert!(!output.join("patient_99").exists());
        let rejects = read(".mimic-eye/rejects/hosp/labevents.csv");
        assert!(rejects.ends_with(",6,4,\"wrong field count: expected 3, found 2\",\"5,12\"\n"), "{rejects}");
        assert!(!paths::staging_dir(&output, "hosp/labevents").exists(), "staging left behind");
        let manifest = state::load_manifest(&output, "hosp/labevents").unwrap();
        assert_eq!(manifest.counts, c);
        assert_eq!(manifest.files.len(), 3, "{:?}", manifest.files);
    }
}
