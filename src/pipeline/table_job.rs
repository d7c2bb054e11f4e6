//! One table job's topology: reader → [fixer] → writer → publish, each actor on its own
//! blocking thread, linked by bounded channels of batches.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cohort::Cohort;
use crate::config::Config;
use crate::input::{self, Module};
use crate::pipeline::batch::{self, ReadMsg};
use crate::pipeline::context::{raise_open_file_limit, BuildContext};
use crate::pipeline::error::{At, JobError};
use crate::pipeline::jobs::{plan_routing, JobKind, TableJob};
use crate::pipeline::linker::Links;
use crate::pipeline::paths;
use crate::pipeline::planner;
use crate::pipeline::publish::{self, Manifest};
use crate::pipeline::reader::TableReader;
use crate::pipeline::writer::{Route, Writer, WriterOutcome, WriterSpec};
use crate::progress::Progress;

/// Batches in flight on each link between actors (memory: capacity × about 512 KiB).
pub const CHANNEL_CAPACITY: usize = 4;

/// Runs one table job end to end and publishes it. The previous output stays on failure.
pub async fn run_table_job(ctx: Arc<BuildContext>, job: TableJob) -> Result<WriterOutcome, JobError> {
    let started = Instant::now();
    let path = job.path.clone();
    let sha256 = ctx.integrity.table_check(&path);
    let reader = tokio::task::spawn_blocking(move || TableReader::open_checked(&path, sha256))
        .await
        .map_err(|e| JobError::joined("reader", &job.key, e))??;
    let output = ctx.config.output.clone();
    // Read even with --full: it says whether this table was split per patient before.
    let last = publish::load_manifest(&output, &job.key);
    let split_before = last.as_ref().is_some_and(Manifest::was_split);
    let plan = plan_routing(&job, &reader, ctx.config.profile, split_before)?;

    // What must be done, from the last manifest of this job.
    let mut input = format!("{};{}", planner::settings_key(&ctx.config), crate::fingerprint::of_file(&job.path));
    if plan.route == Route::ByDicom {
        input = format!("{input};dicoms={}", planner::dicom_map_key(&ctx.cohort));
    }
    let previous = if ctx.force_full { None } else { last };
    let split = plan.route == Route::BySubject;
    let action = planner::decide(previous.as_ref(), &input, &ctx.cohort, split);
    let (only, kept_files) = match (&action, &previous) {
        (planner::Action::Skip, Some(prev)) => {
            tracing::debug!(table = %job.key, "unchanged: skipped");
            return Ok(WriterOutcome { counts: prev.counts, files: prev.files.clone(), ..Default::default() });
        }
        (planner::Action::Patients { added, removed }, Some(prev)) => {
            tracing::info!(table = %job.key, added = added.len(), removed = removed.len(), "cohort changed: writing new patients only");
            // Keep the files of patients still in the cohort; drop those of patients who left.
            let gone: Vec<String> = removed.iter().map(|s| s.folder()).collect();
            let kept: Vec<PathBuf> =
                prev.files.iter().filter(|f| !gone.iter().any(|g| f.starts_with(g))).cloned().collect();
            (Some(Arc::new(added.iter().copied().collect::<std::collections::HashSet<_>>())), kept)
        }
        _ => (None, Vec::new()),
    };
    let staging = paths::staging_dir(&output, &job.key);
    let _ = std::fs::remove_dir_all(&staging);
    let spec = WriterSpec {
        table: job.key.clone(),
        source: job.path.clone(),
        header: reader.header().raw.clone(),
        index_column: ctx.config.index_column,
        route: plan.route,
        patient_file: plan.patient_file,
        // A patients-only pass leaves the whole-table file (same input) as it is.
        whole_file: if only.is_some() { None } else { plan.whole_file },
        cohort: Arc::clone(&ctx.cohort),
        staging,
        max_open_files: ctx.max_open_files,
        only,
    };
    let bar = ctx.progress.table(&job.key, std::fs::metadata(&job.path).map(|m| m.len()).unwrap_or(0));
    let counter = reader.progress_counter();
    let reader_columns = reader.header().names.len();

    let (tx, rx) = async_channel::bounded::<ReadMsg>(CHANNEL_CAPACITY);
    // Weak: the probe must not keep the link open when an actor ends.
    let mut probes = vec![("reader", tx.downgrade())];
    let key_column = plan.key_column;
    let cancel = Arc::clone(&ctx.cancel);
    // Batches circulate: reader -> (fixer) -> writer -> back to the reader.
    let pool = batch::BatchPool::new(CHANNEL_CAPACITY + 2);
    let reader_pool = pool.clone();
    let read_task = tokio::task::spawn_blocking(move || reader.stream_until(key_column, &tx, &cancel, &reader_pool));
    let rx = match plan.fix {
        Some(fix) => {
            let (path, links) = (job.path.clone(), Arc::clone(&ctx.links));
            let fix = tokio::task::spawn_blocking(move || fix.prepare(&path, &links))
                .await
                .map_err(|e| JobError::joined("fixer", &job.key, e))??;
            let (ftx, frx) = async_channel::bounded::<ReadMsg>(CHANNEL_CAPACITY);
            probes = vec![("reader->fixer", probes.remove(0).1), ("fixer->writer", ftx.downgrade())];
            tokio::task::spawn_blocking(move || fix.run(rx, ftx));
            frx
        }
        None => rx,
    };
    let write_task = tokio::task::spawn_blocking(move || Writer::new(spec)?.run(rx, &pool));
    let ticker = {
        let (bar, key) = (bar.clone(), job.key.clone());
        let total = std::fs::metadata(&job.path).map(|m| m.len()).unwrap_or(0);
        let progress = metrics::gauge!(crate::telemetry::TABLE_PROGRESS, "table" => key.clone());
        let probes: Vec<_> = probes
            .into_iter()
            .map(|(name, weak)| {
                let name = if name == "reader" { "reader->writer" } else { name };
                metrics::gauge!(crate::telemetry::CHANNEL_CAPACITY, "link" => name).set(CHANNEL_CAPACITY as f64);
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
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let outcome = write_task.await.map_err(|e| JobError::joined("writer", &job.key, e));
    ticker.abort();
    crate::telemetry::update_status(|s| {
        s.tables.remove(&job.key);
    });
    let _ = read_task.await;
    let mut outcome = outcome??;
    bar.finish();
    let field_count_rejects = outcome.rejects_by_reason.get("field_count").copied().unwrap_or(0);
    if field_count_rejects * 2 > outcome.counts.read {
        // Most rows do not fit the header: it was cut short or extended, and publishing would
        // replace every patient's file with nothing. The table fails; its previous output stays.
        return Err(JobError::HeaderMismatch {
            path: job.path.clone(),
            columns: reader_columns,
            rows: outcome.counts.read,
        });
    }
    outcome.files.extend(kept_files);
    outcome.files.sort();
    outcome.files.dedup();
    let manifest = Manifest {
        job: job.key.clone(),
        split,
        files: outcome.files.clone(),
        counts: outcome.counts,
        input,
        cohort: planner::cohort_list(&ctx.cohort),
        per_patient: outcome.per_patient.clone(),
        copies: Default::default(),
    };
    tokio::task::spawn_blocking(move || publish::publish(&output, manifest))
        .await
        .map_err(|e| JobError::joined("publish", &job.key, e))?
        .at(&ctx.config.output)?;
    tracing::info!(
        table = %job.key, read = outcome.counts.read, written = outcome.counts.written,
        outside = outcome.counts.outside_cohort, rejected = outcome.counts.rejected,
        seconds = started.elapsed().as_secs_f64(), "table published"
    );
    Ok(outcome)
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
        config,
        progress: Progress::new(true),
        max_open_files: raise_open_file_limit(),
        cancel: Arc::new(AtomicBool::new(false)),
        force_full: true,
        reflacx_phases: Vec::new(),
        master_sheet: None,
        integrity: Default::default(),
    });
    let job =
        TableJob { key: format!("hosp/{name}"), path: table, kind: JobKind::Clinical { module: Module::Hosp, name } };
    Ok(run_table_job(ctx, job).await?)
}
