//! Wires the actors of a build: linker → (reader → fixer → writer → publish) per table.
//!
//! Each table job is a reader, an optional fixer and a writer, each on a blocking thread,
//! connected by bounded channels of batches; tokio runs up to `parallel_tables` jobs at once.

pub mod batch;
pub mod counts;
pub mod error;
pub mod fixer;
pub mod folders;
pub mod linker;
pub mod outsums;
pub mod paths;
pub mod planner;
pub mod publish;
pub mod reader;
pub mod shrink;
pub mod vanished;
pub mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::cohort::Cohort;
use crate::config::{Config, Profile};
use crate::input::{self, Module};
use crate::progress::Progress;
use batch::batch_of;
use batch::ReadMsg;
use fixer::Fix;
use linker::Links;

use counts::TableCounts;
use error::{At, JobError};
use publish::Manifest;
use reader::TableReader;
use writer::{Route, Writer, WriterOutcome, WriterSpec};

/// Batches in flight on each link between actors (memory: capacity × about 512 KiB).
pub const CHANNEL_CAPACITY: usize = 4;

/// What kind of table a job handles, which decides where its rows go.
#[derive(Debug, Clone)]
pub enum JobKind {
    /// A MIMIC-IV / ED table: split by subject_id if it has one, else whole to spreadsheets.
    Clinical { module: Module, name: String },
    /// chexpert, negbio, split: split by subject_id and whole.
    Cxr { name: String },
    /// EyeGaze eye_gaze, fixations, bounding_boxes: split by dicom id and whole (repaired).
    EyeGaze { name: String },
}

#[derive(Debug, Clone)]
pub struct TableJob {
    pub key: String,
    pub path: PathBuf,
    pub kind: JobKind,
}

/// Shared, read-only context of a build.
pub struct BuildContext {
    pub config: Config,
    /// Set to stop the build: readers stop, nothing unfinished is published.
    pub cancel: Arc<AtomicBool>,
    /// Ignore manifests: rewrite everything.
    pub force_full: bool,
    pub cohort: Arc<Cohort>,
    pub links: Arc<Links>,
    pub progress: Progress,
    pub max_open_files: usize,
    /// The linker's REFLACX phases and EyeGaze master sheet, read once and reused by the fixer
    /// and the folder sync.
    pub reflacx_phases: Vec<reader::SmallTable>,
    pub master_sheet: Option<reader::SmallTable>,
    /// The datasets' SHA256SUMS.txt and what this build's reads and copies found.
    pub integrity: Arc<crate::sums::Integrity>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CohortSummary {
    pub kind: &'static str,
    pub size: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceCounts {
    pub patients: usize,
    pub images: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub profile: &'static str,
    /// The cohort rule and how many patients it gave.
    pub cohort: CohortSummary,
    pub patients: usize,
    pub stays: usize,
    pub images: usize,
    pub linked_images: usize,
    pub eye_gaze: SourceCounts,
    pub reflacx: SourceCounts,
    pub both: SourceCounts,
    pub window_days: u32,
    pub tables: BTreeMap<String, TableCounts>,
    pub failed: BTreeMap<String, String>,
    /// Tables whose input was still being written: previous output kept.
    pub pending: Vec<String>,
    pub missing_datasets: Vec<String>,
    /// Tables gone from the input whose outputs this build removed.
    pub removed_tables: Vec<String>,
    /// Table-like files not read (odd names, symbolic links leaving the input tree).
    pub skipped_files: Vec<input::Skipped>,
    /// The folders this build read, for the daemon's watcher (not written to summary.json).
    #[serde(skip)]
    pub read_folders: Vec<folders::WatchDir>,
    /// Rows of the linker's tables skipped for a malformed id or time (file, line, reason).
    pub linker_skipped: Vec<linker::LinkReject>,
    /// Each parent dataset: folder, version, SHA256SUMS.txt outcome, tables read.
    pub datasets: BTreeMap<&'static str, crate::sums::Provenance>,
    pub program: crate::sums::Program,
    pub settings: crate::sums::Settings,
    /// How the copied folders' files were placed.
    pub files: counts::FileStats,
    pub peak_rss_bytes: u64,
    pub duration_seconds: f64,
}

impl Summary {
    pub fn headline(&self) -> String {
        format!(
            "patients {}, stays {}, images {}, linked images {} (profile {})",
            self.patients, self.stays, self.images, self.linked_images, self.profile
        )
    }
}

/// The jobs for every table found in the input.
pub fn plan_jobs(config: &Config, side: &input::SideInputs) -> Vec<TableJob> {
    let mut jobs = Vec::new();
    for module in Module::ALL {
        for (name, path) in module.tables(config) {
            let key = format!("{}/{name}", module.key());
            jobs.push(TableJob { key, path, kind: JobKind::Clinical { module, name } });
        }
    }
    for (name, path) in &side.cxr_tables {
        jobs.push(TableJob {
            key: format!("mimic-cxr-jpg/{name}"),
            path: path.clone(),
            kind: JobKind::Cxr { name: name.clone() },
        });
    }
    for (name, path) in &side.eye_gaze_tables {
        jobs.push(TableJob {
            key: format!("egd-cxr/{name}"),
            path: path.clone(),
            kind: JobKind::EyeGaze { name: name.clone() },
        });
    }
    // Big tables first, so the long poles start early and small ones fill the gaps.
    jobs.sort_by_key(|j| std::cmp::Reverse(std::fs::metadata(&j.path).map(|m| m.len()).unwrap_or(0)));
    jobs
}

/// Routing decided from the job kind and the header.
struct Plan {
    key_column: Option<usize>,
    route: Route,
    patient_file: Option<PathBuf>,
    whole_file: Option<PathBuf>,
    fix: Option<Fix>,
}

/// `split_before`: the previous build split this table per patient. A table known to be split
/// (by name or by that record) must have its `subject_id`: whether its rows go to patients or
/// whole to `spreadsheets/` never flips because of a damaged header.
fn plan_routing(job: &TableJob, reader: &TableReader, profile: Profile, split_before: bool) -> Result<Plan, JobError> {
    Ok(match &job.kind {
        JobKind::Clinical { module, name } => {
            let folder = module.folder();
            let whole = PathBuf::from("spreadsheets").join(folder).join(format!("{name}.csv"));
            let per_patient = split_before || input::is_per_patient_table(name);
            let key = if per_patient || reader.header().find("subject_id").is_some() {
                Some(reader.require("subject_id")?)
            } else {
                None
            };
            match key {
                // patients goes to spreadsheets only, as the authors did.
                Some(_) if name == "patients" => Plan {
                    key_column: None,
                    route: Route::Whole,
                    patient_file: None,
                    whole_file: Some(whole),
                    fix: None,
                },
                Some(col) => Plan {
                    key_column: Some(col),
                    route: Route::BySubject,
                    patient_file: Some(PathBuf::from(folder).join(format!("{name}.csv"))),
                    whole_file: (name == "triage").then_some(whole),
                    fix: None,
                },
                None => Plan {
                    key_column: None,
                    route: Route::Whole,
                    patient_file: None,
                    whole_file: Some(whole),
                    fix: None,
                },
            }
        }
        JobKind::Cxr { name } => Plan {
            key_column: Some(reader.require("subject_id")?),
            route: Route::BySubject,
            patient_file: Some(PathBuf::from("CXR-JPG").join(format!("cxr_{name}.csv"))),
            whole_file: Some(PathBuf::from("spreadsheets/CXR-JPG").join(format!("cxr_{name}.csv"))),
            fix: None,
        },
        JobKind::EyeGaze { name } => {
            let col = reader.require("dicom_id")?;
            // Profile release wrote fixations.csv where the whole eye_gaze table belonged.
            let whole = if profile == Profile::Release && name == "eye_gaze" {
                None
            } else {
                Some(PathBuf::from("spreadsheets/EyeGaze").join(format!("{name}.csv")))
            };
            Plan {
                key_column: Some(col),
                route: Route::ByDicom,
                patient_file: Some(PathBuf::from("EyeGaze").join(format!("{name}.csv"))),
                whole_file: whole,
                fix: Fix::for_eye_gaze(name, profile),
            }
        }
    })
}

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

/// Where an in-memory derived table (cxr_meta, REFLACX metadata, master sheet) goes.
pub struct DerivedTable<'a> {
    /// The job (and manifest) name.
    pub job: &'a str,
    /// The file its rows came from, named in its rejects.
    pub source: &'a Path,
    pub route: Route,
    /// Inside each patient folder, when split by subject.
    pub patient_file: Option<PathBuf>,
    /// The whole table, under the output root.
    pub whole_file: Option<PathBuf>,
    /// Malformed source records past the ones kept for the rejects file: counted only.
    pub rejects_not_kept: u64,
}

/// Writes a derived table's `rows` (under `header`) through a writer and publishes it as one job.
pub fn write_derived(
    ctx: &BuildContext,
    table: DerivedTable<'_>,
    header: Vec<u8>,
    rows: batch::Batch,
) -> Result<TableCounts, JobError> {
    let DerivedTable { job, source, route, patient_file, whole_file, rejects_not_kept } = table;
    let staging = paths::staging_dir(&ctx.config.output, job);
    let _ = std::fs::remove_dir_all(&staging);
    let spec = WriterSpec {
        table: job.to_string(),
        source: source.to_path_buf(),
        header,
        index_column: ctx.config.index_column,
        route,
        patient_file,
        whole_file,
        cohort: Arc::clone(&ctx.cohort),
        staging,
        max_open_files: ctx.max_open_files,
        only: None,
    };
    let mut writer = Writer::new(spec)?;
    writer.write_batch(&rows)?;
    let mut outcome = writer.finish()?;
    if rejects_not_kept > 0 {
        tracing::warn!(
            table = job,
            rows = rejects_not_kept,
            "more malformed rows than the rejects file keeps: counted only"
        );
        outcome.counts.read += rejects_not_kept;
        outcome.counts.rejected += rejects_not_kept;
    }
    let manifest =
        Manifest { job: job.to_string(), files: outcome.files, counts: outcome.counts, ..Default::default() };
    publish::publish(&ctx.config.output, manifest).at(&ctx.config.output)?;
    Ok(outcome.counts)
}

/// `spreadsheets/cxr_meta.csv`, its per-patient rows, and the rows with a stay only.
fn write_cxr_meta(ctx: &BuildContext) -> Result<Vec<(String, TableCounts)>, JobError> {
    let links = &ctx.links;
    let mut header = links.cxr_header.raw.clone();
    header.extend_from_slice(b",in_eye_gaze,in_reflacx,StudyDateTime,stay_id");
    let tf = |b: bool| if b { "True" } else { "False" };
    let rows: Vec<(batch::Origin, Vec<u8>, String, bool)> = links
        .cxr_rows
        .iter()
        .map(|r| {
            let mut rec = r.raw.clone();
            let stay = r.stay.map(|s| s.to_string()).unwrap_or_default();
            rec.extend_from_slice(
                format!(",{},{},{},{stay}", tf(r.in_eye_gaze), tf(r.in_reflacx), r.study_datetime).as_bytes(),
            );
            (r.origin, rec, r.subject.to_string(), r.stay.is_some())
        })
        .collect();
    let mut all = batch_of(rows.iter().map(|(origin, rec, key, _)| (*origin, rec.clone(), key.as_bytes())));
    crate::pipeline::batch::append_rejects(&mut all, &links.cxr_rejects);
    let linked =
        batch_of(rows.iter().filter(|r| r.3).map(|(origin, rec, key, _)| (*origin, rec.clone(), key.as_bytes())));
    let meta = write_derived(
        ctx,
        DerivedTable {
            job: "cxr_meta",
            source: &ctx.links.cxr_source,
            route: Route::BySubject,
            patient_file: Some(PathBuf::from("CXR-JPG/cxr_meta.csv")),
            whole_file: Some(PathBuf::from("spreadsheets/cxr_meta.csv")),
            rejects_not_kept: links.cxr_rejects.not_kept,
        },
        header.clone(),
        all,
    )?;
    let only = write_derived(
        ctx,
        DerivedTable {
            job: "cxr_meta_with_stay_id_only",
            source: &ctx.links.cxr_source,
            route: Route::Whole,
            patient_file: None,
            whole_file: Some(PathBuf::from("spreadsheets/cxr_meta_with_stay_id_only.csv")),
            rejects_not_kept: 0,
        },
        header,
        linked,
    )?;
    Ok(vec![("cxr_meta".into(), meta), ("cxr_meta_with_stay_id_only".into(), only)])
}

/// Raises the soft open-file limit to the hard one; returns how many output files to keep open.
pub fn raise_open_file_limit() -> usize {
    let limit = crate::sys::raise_open_file_limit() as usize;
    // Leave room for inputs, sockets and the other jobs running at once.
    (limit.saturating_sub(OPEN_FILES_RESERVED) / OPEN_FILES_SHARES).clamp(16, MAX_OPEN_OUTPUT_FILES)
}

/// Descriptors kept for inputs, sockets and the state folder.
const OPEN_FILES_RESERVED: usize = 64;
/// The table jobs and their readers share the rest.
const OPEN_FILES_SHARES: usize = 4;
/// More open output files than this buys nothing (the LRU already hits).
const MAX_OPEN_OUTPUT_FILES: usize = 4096;

/// How a build runs (the daemon sets these; a one-shot build uses the defaults).
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    pub cancel: Arc<AtomicBool>,
    /// Rewrite everything, ignoring what earlier builds recorded.
    pub force_full: bool,
    /// Input files that are not complete yet (still being written): their tables keep their
    /// previous output this time.
    pub unstable: std::collections::HashSet<PathBuf>,
    /// Accept linker tables that lost most of their rows since the last build.
    pub accept_shrink: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("the build was cancelled")]
pub struct Cancelled;

/// A table that decides the cohort is still being written: the build waits for it (the daemon
/// counts this as pending, not as a failure).
#[derive(Debug, thiserror::Error)]
#[error("{} is still being written; the build waits for it", .0.display())]
pub struct Pending(pub PathBuf);

/// The derived jobs whose content depends on the stay links.
const STAY_LINKED_JOBS: [&str; 3] = ["cxr_meta", "cxr_meta_with_stay_id_only", "egd-cxr/master_sheet"];

/// (stays, linked images) of the last build's summary, kept while edstays is being written.
fn previous_stay_counts(output: &Path) -> Option<(usize, usize)> {
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(output.join("summary.json")).ok()?).ok()?;
    let n = |k: &str| summary[k].as_u64().map(|v| v as usize);
    Some((n("stays")?, n("linked_images")?))
}

/// One build: link, every table job (each redoing only what changed), derived tables, copied
/// folders, summary.
pub async fn build(config: Config, progress: Progress, options: BuildOptions) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let output = config.output.clone();
    std::fs::create_dir_all(paths::state_dir(&output))
        .with_context(|| format!("creating output directory {}", output.display()))?;
    let recovered = publish::recover(&output).context("recovering interrupted publishes")?;
    if recovered > 0 {
        tracing::info!(jobs = recovered, "finished publishes interrupted by a crash");
    }
    let side = input::side_inputs(&config);
    let missing = check_inputs(&config, &side)?;
    let integrity = crate::sums::Integrity::load(&config);
    crate::sums::Integrity::report_newer_versions(&config);
    // A linker table still being written: the CXR metadata, REFLACX phases and master sheet
    // decide the cohort, so the build waits (pending, not failed); edstays only gives the stay
    // links, so the build goes on without it and keeps the previous stay-linked outputs.
    let unstable = |p: &PathBuf| options.unstable.contains(p);
    let cohort_inputs = side.cxr_metadata.iter().chain(&side.reflacx_phases).chain(&side.master_sheet);
    if let Some(p) = cohort_inputs.into_iter().find(|p| unstable(p)) {
        return Err(Pending(p.clone()).into());
    }
    let stays_pending = side.edstays.clone().filter(unstable);
    let mut pending = Vec::new();
    if stays_pending.is_some() {
        tracing::info!("edstays is still being written: stay links and their outputs keep their previous state");
        pending.push("mimic-iv-ed/edstays".to_string());
    }

    let links = {
        let (cfg, side, integrity) = (config.clone(), side.clone(), Arc::clone(&integrity));
        let edstays = if stays_pending.is_some() { None } else { side.edstays.clone() };
        tokio::task::spawn_blocking(move || -> anyhow::Result<(Links, linker::LinkInputs)> {
            let rule = crate::cohort::CohortRule::load(&cfg.cohort)?;
            let inputs = linker::load_inputs(
                side.cxr_metadata.as_deref(),
                edstays.as_deref(),
                &side.reflacx_phases,
                side.master_sheet.as_deref(),
                &|p| integrity.table_check(p),
                &rule,
            )?;
            Ok((linker::link(&inputs, cfg.profile, cfg.window_days, &rule)?, inputs))
        })
        .await??
    };
    let (links, inputs) = links;
    let mut linker_rows = shrink::LinkerRows::of(&inputs);
    if let Some(edstays) = &stays_pending {
        linker_rows.carry(&output, edstays);
    }
    if !options.accept_shrink {
        linker_rows.check(&output)?;
    }
    linker_rows.record(&output).with_context(|| format!("recording linker rows in {}", output.display()))?;
    let linker::LinkInputs { reflacx_metadata, master_sheet, .. } = inputs;
    tracing::info!(patients = links.cohort.len(), images = links.cxr_rows.len(), "cohort linked");

    let ctx = Arc::new(BuildContext {
        cohort: Arc::new(links.cohort.clone()),
        links: Arc::new(links),
        config: config.clone(),
        progress,
        max_open_files: raise_open_file_limit(),
        cancel: Arc::clone(&options.cancel),
        force_full: options.force_full,
        reflacx_phases: reflacx_metadata,
        master_sheet,
        integrity: Arc::clone(&integrity),
    });

    let mut tables = BTreeMap::new();
    let mut failed = BTreeMap::new();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(config.parallel_tables));
    let mut set = tokio::task::JoinSet::new();
    let jobs = plan_jobs(&config, &side);
    let planned: std::collections::HashSet<String> = jobs.iter().map(|j| j.key.clone()).collect();
    let removed_tables = vanished::remove_vanished(&config, &planned)
        .with_context(|| format!("removing the outputs of tables gone from the input in {}", output.display()))?;
    for job in jobs {
        if options.unstable.contains(&job.path) {
            tracing::info!(table = %job.key, "input still being written: previous output kept");
            if let Some(m) = publish::load_manifest(&output, &job.key) {
                tables.insert(job.key.clone(), m.counts);
            }
            pending.push(job.key);
            continue;
        }
        let (ctx, sem) = (Arc::clone(&ctx), Arc::clone(&semaphore));
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            let key = job.key.clone();
            (key, run_table_job(ctx, job).await)
        });
    }
    while let Some(done) = set.join_next().await {
        match done {
            Ok((key, Ok(outcome))) => {
                tables.insert(key, outcome.counts);
            }
            Ok((key, Err(e))) => {
                let error = crate::telemetry::bounded_text(&e.to_string());
                tracing::error!(table = %key, error, "table failed; its previous output is kept");
                // What it staged is never published: free the space now.
                let _ = std::fs::remove_dir_all(paths::staging_dir(&output, &key));
                failed.insert(key, error);
            }
            Err(e) => {
                failed.insert("internal".into(), crate::telemetry::bounded_text(&e.to_string()));
            }
        }
    }

    if options.cancel.load(Ordering::Relaxed) {
        return Err(Cancelled.into());
    }
    let derived_ctx = Arc::clone(&ctx);
    let stays_known = stays_pending.is_none();
    let derived = tokio::task::spawn_blocking(move || -> Result<Vec<(String, TableCounts)>, JobError> {
        let mut v = if stays_known { write_cxr_meta(&derived_ctx)? } else { Vec::new() };
        v.extend(fixer::write_fixed_side_tables(&derived_ctx, stays_known)?);
        v.extend(folders::sync_all(&derived_ctx)?);
        Ok(v)
    })
    .await?;
    if !stays_known {
        for job in STAY_LINKED_JOBS {
            if let Some(m) = publish::load_manifest(&output, job) {
                tables.insert(job.to_string(), m.counts);
            }
        }
    }
    match derived {
        Ok(v) => tables.extend(v),
        Err(e) => {
            failed.insert("derived".into(), crate::telemetry::bounded_text(&e.to_string()));
        }
    }

    let damaged = integrity.mismatched_files();
    if let Some(first) = damaged.first() {
        let error = format!("{} copied file(s): {}: {}", damaged.len(), first.display(), crate::sums::MISMATCH);
        failed.insert("copied files".into(), crate::telemetry::bounded_text(&error));
    }
    let links = &ctx.links;
    let previous = previous_stay_counts(&output);
    let both_dicoms = links.eye_gaze_dicoms.intersection(&links.reflacx_dicoms).count();
    let both_subjects = links.eye_gaze_subjects.intersection(&links.reflacx_subjects).count();
    let summary = Summary {
        profile: config.profile.as_str(),
        cohort: CohortSummary { kind: config.cohort.name(), size: links.cohort.len() },
        patients: links.cohort.len(),
        stays: if stays_known { links.stays() } else { previous.map_or(0, |p| p.0) },
        images: links.cxr_rows.len(),
        linked_images: if stays_known { links.linked_images() } else { previous.map_or(0, |p| p.1) },
        eye_gaze: SourceCounts { patients: links.eye_gaze_subjects.len(), images: links.eye_gaze_dicoms.len() },
        reflacx: SourceCounts { patients: links.reflacx_subjects.len(), images: links.reflacx_dicoms.len() },
        both: SourceCounts { patients: both_subjects, images: both_dicoms },
        window_days: config.window_days,
        tables,
        failed,
        pending,
        missing_datasets: missing,
        removed_tables,
        skipped_files: input::skipped_files(&config),
        read_folders: folders::read_folders(&ctx),
        linker_skipped: links.warnings.clone(),
        datasets: integrity.provenance(&config),
        program: crate::sums::Program::this(),
        settings: crate::sums::Settings::of(&config),
        files: integrity.files.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        peak_rss_bytes: peak_rss_bytes(),
        duration_seconds: started.elapsed().as_secs_f64(),
    };
    publish::write_atomic(&output.join("summary.json"), &serde_json::to_vec_pretty(&summary)?)
        .with_context(|| format!("writing {}", output.join("summary.json").display()))?;
    let sums = output.join(crate::sums::SUMS_FILE);
    outsums::write(&output).with_context(|| format!("writing {}", sums.display()))?;
    Ok(summary)
}

/// The process's peak resident memory (VmHWM), for the summary and the benchmarks.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        .map_or(0, |kb| kb * 1024)
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

/// Hard links share their source's inode and mode: say so (once per process) when the input
/// tree is open to other users, since the linked output files then are too.
fn warn_if_shared_by_links(config: &Config) {
    use std::os::unix::fs::PermissionsExt;
    static WARNED: std::sync::Once = std::sync::Once::new();
    let mode = std::fs::metadata(&config.input).map_or(0, |m| m.permissions().mode());
    if config.files == crate::config::FilesMode::Hardlink && mode & 0o007 != 0 {
        WARNED.call_once(|| {
            tracing::warn!(
                input = %config.input.display(),
                mode = format!("{:o}", mode & 0o777),
                "the input tree is open to other users: hard-linked images, reports and readings in the output share their source's mode (use files = \"copy\" for 0640 copies)"
            );
        });
    }
}

/// Fails at start-up when a required dataset is missing; names the optional ones that are.
fn check_inputs(config: &Config, side: &input::SideInputs) -> anyhow::Result<Vec<String>> {
    if !config.input.is_dir() {
        anyhow::bail!("input directory {} does not exist", config.input.display());
    }
    let checks = crate::inventory::checks(config, side);
    if let Some(c) = checks.iter().find(|c| c.required && !c.present) {
        anyhow::bail!("{} {}", c.missing, crate::inventory::INPUTS_HINT);
    }
    warn_if_shared_by_links(config);
    let mut missing = Vec::new();
    for c in checks.iter().filter(|c| !c.present) {
        tracing::warn!(dataset = c.name, path = %c.path.display(), "dataset missing: the build goes on without it");
        missing.push(c.name.to_string());
    }
    Ok(missing)
}
