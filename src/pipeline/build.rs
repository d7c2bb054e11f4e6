//! One build: check the inputs, link the cohort, run every table job (each redoing only what
//! changed), write the derived tables and copied folders, publish the summary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;

use crate::config::Config;
use crate::counts::TableCounts;
use crate::input::{self};
use crate::pipeline::context::{raise_open_file_limit, BuildContext};
use crate::pipeline::derived::side_tables;
use crate::pipeline::derived::write_cxr_meta;
use crate::pipeline::error::{JobError, ReadError};
use crate::pipeline::folders;
use crate::pipeline::job_keys;
use crate::pipeline::jobs::discover_jobs;
use crate::pipeline::link_cache::{LinkCache, LinkKey};
use crate::pipeline::linker::{self, Links};
use crate::pipeline::paths;
use crate::pipeline::publish;
use crate::pipeline::read_set;
use crate::pipeline::shrink;
use crate::pipeline::state;
use crate::pipeline::summary::{self, CohortSummary, SourceCounts, Summary};
use crate::pipeline::sums_cache::{self, SumsCache};
use crate::pipeline::table_job::run_table_job;
use crate::pipeline::vanished;
use crate::progress::ProgressBars;
use crate::shutdown::CancelToken;
use crate::sums::Sums;

/// How a build runs (the daemon sets these; a one-shot build uses the defaults).
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    pub(crate) cancel: CancelToken,
    /// Rewrite everything, ignoring what earlier builds recorded.
    pub force_full: bool,
    /// Input files that are not complete yet (still being written): their tables keep their
    /// previous output this time.
    pub unstable: std::collections::HashSet<PathBuf>,
    /// Accept linker tables that lost most of their rows since the last build.
    pub accept_shrink: bool,
    /// Compare the output with its manifests first and redo the jobs whose files were removed
    /// or changed (the daemon does this in its own checkup instead, between builds).
    pub check_outputs: bool,
    /// A `.csv.gz` that ends inside a gzip member is taken for a download still arriving: its
    /// table is pending, not failed, and the file is named in [`Summary::incomplete_inputs`]
    /// (or a linker table's in [`Pending`]). The daemon sets this: its watcher waits only for
    /// a file to stop changing, and the build's own read is the check that it decodes to its
    /// end, so a changed table is decoded once, not once to check it and again to build.
    pub cut_short_is_pending: bool,
    /// The last link, reused when none of its inputs changed (the daemon keeps one).
    pub(crate) link_cache: Option<LinkCache>,
    /// The last parse of the checksum files, reused while they are unchanged (the daemon's).
    pub(crate) sums_cache: Option<SumsCache>,
}

impl BuildOptions {
    /// A one-shot build's options: nothing cancels it and no input is pending.
    pub fn one_shot(force_full: bool, accept_shrink: bool) -> Self {
        Self { force_full, accept_shrink, check_outputs: true, ..Default::default() }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the build was cancelled")]
pub(crate) struct Cancelled;

/// A table that decides the cohort is still being written: the build waits for it (the daemon
/// counts this as pending, not as a failure).
#[derive(Debug, thiserror::Error)]
#[error("{} is still being written; the build waits for it", .0.display())]
pub(crate) struct Pending(pub PathBuf);

/// (stays, linked images) of the last build's summary, kept while edstays is being written.
fn previous_stay_counts(output: &Path) -> Option<(usize, usize)> {
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(output.join("summary.json")).ok()?).ok()?;
    let n = |k: &str| summary[k].as_u64().map(|v| v as usize);
    Some((n("stays")?, n("linked_images")?))
}

/// One build: link, every table job (each redoing only what changed), derived tables, copied
/// folders, summary.
pub async fn build(config: Config, progress: ProgressBars, options: BuildOptions) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let output = config.output.clone();
    prepare_output(&output, options.check_outputs)?;
    let side = input::linker_table_paths(&config).context("finding the input's tables")?;
    let missing = check_inputs(&config, &side)?;
    let (tables_sums, sums_key) = sums_cache::table_sums(&config, options.sums_cache.as_ref());
    let mut integrity = crate::integrity::Integrity::with_sums(tables_sums);
    crate::integrity::Integrity::report_newer_versions(&config);
    let stays_pending = linker_inputs_pending(&side, &options)?;
    let (links, inputs, link_digest) = link_cohort(&config, &side, &integrity, stays_pending.is_none(), &options)
        .await
        .map_err(|e| linker_cut_short(e, &options))?;
    check_linker_rows(&config, &inputs, links.cohort.len(), stays_pending.as_deref(), options.accept_shrink)?;
    let linker::LinkInputs { reflacx_metadata, master_sheet, .. } = inputs;
    // The checksum lines of the files the folder jobs will copy, now that the cohort is known.
    match Arc::get_mut(&mut integrity) {
        Some(i) => {
            let add = |sums: &mut Sums| {
                sums.add_folders(|each| read_set::each_copied_folder(&config, &links, &reflacx_metadata, each));
            };
            match (&options.sums_cache, sums_key, &link_digest) {
                (Some(cache), Some(key), Some(link)) => cache.add_folders(&key, link, &mut i.sums, add),
                _ => add(&mut i.sums),
            }
        }
        None => tracing::warn!("copied files are not checked against SHA256SUMS.txt this build"),
    }
    tracing::info!(patients = links.cohort.len(), images = links.cxr_rows.len(), "cohort linked");
    let ctx = Arc::new(BuildContext {
        cohort: Arc::new(links.cohort.clone()),
        links,
        link_digest,
        config: config.clone(),
        progress,
        max_open_files: raise_open_file_limit(),
        cancel: options.cancel.clone(),
        force_full: options.force_full,
        accept_shrink: options.accept_shrink,
        reflacx_phases: reflacx_metadata,
        master_sheet,
        integrity: Arc::clone(&integrity),
        dirs: Arc::default(),
    });
    let stays_known = stays_pending.is_none();
    // The derived tables and copied folders need the links, not the table jobs' outputs: they
    // run beside the big tables (mostly file system calls, they fill the time the reading
    // threads leave) instead of after them. Profile release's copy of the published fixations
    // table is the exception, made once the tables are done.
    let (report, derived) =
        tokio::join!(run_table_jobs(&ctx, &side, &options), write_derived_tables(&ctx, stays_known));
    ctx.progress.finish();
    let mut report = report?;
    report.merge(derived?);
    let copy_ctx = Arc::clone(&ctx);
    if let Err(e) = tokio::task::spawn_blocking(move || side_tables::write_release_eye_gaze_copy(&copy_ctx)).await? {
        report.fail(job_keys::EYE_GAZE_RELEASE_COPY.into(), &e);
    }
    if stays_pending.is_some() {
        report.pending.insert(0, "mimic-iv-ed/edstays".to_string());
    }
    if options.cancel.is_cancelled() {
        return Err(Cancelled.into());
    }
    let summary = summarize(&ctx, report, missing, stays_known, started);
    state::write_atomic(&output.join("summary.json"), &serde_json::to_vec_pretty(&summary)?)
        .with_context(|| format!("writing {}", output.join("summary.json").display()))?;
    let report = output.join(crate::pipeline::report::REPORT_FILE);
    state::write_atomic(&report, crate::pipeline::report::render(&summary, None).as_bytes())
        .with_context(|| format!("writing {}", report.display()))?;
    let sums = output.join(crate::sums::SUMS_FILE);
    let (listed, hashed) = crate::pipeline::outsums::write(&output, &options.cancel)
        .with_context(|| format!("writing {}", sums.display()))?;
    tracing::debug!(listed, hashed, "output SHA256SUMS.txt written");
    Ok(summary)
}

/// The output's state folder exists, interrupted publishes are finished and, if asked, the
/// jobs whose published files were removed or changed behind the build's back are forgotten,
/// so that this build redoes them (a `stat` per published file).
fn prepare_output(output: &Path, check_outputs: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(paths::state_dir(output))
        .with_context(|| format!("creating output directory {}", output.display()))?;
    let recovered = publish::recover(output).context("recovering interrupted publishes")?;
    if recovered > 0 {
        tracing::info!(jobs = recovered, "finished publishes interrupted by a crash");
    }
    if check_outputs {
        for job in state::damaged_jobs(output) {
            tracing::warn!(job, "published files missing or changed: the job is redone");
            state::forget(output, &job).with_context(|| format!("forgetting job {job}"))?;
        }
    }
    Ok(())
}

/// A linker table still being written: the CXR metadata, REFLACX phases and master sheet
/// decide the cohort, so the build waits (pending, not failed); edstays only gives the stay
/// links, so the build goes on without it (returned) and keeps the previous stay-linked outputs.
fn linker_inputs_pending(side: &input::LinkerTablePaths, options: &BuildOptions) -> anyhow::Result<Option<PathBuf>> {
    let unstable = |p: &PathBuf| options.unstable.contains(p);
    let cohort_inputs = side.cxr_metadata.iter().chain(&side.reflacx_phases).chain(&side.master_sheet);
    if let Some(p) = cohort_inputs.into_iter().find(|p| unstable(p)) {
        return Err(Pending(p.clone()).into());
    }
    let stays_pending = side.edstays.clone().filter(unstable);
    if stays_pending.is_some() {
        tracing::info!("edstays is still being written: stay links and their outputs keep their previous state");
    }
    Ok(stays_pending)
}

/// A linker table cut short while the daemon builds: the build waits for it (see
/// [`BuildOptions::cut_short_is_pending`]).
fn linker_cut_short(e: anyhow::Error, options: &BuildOptions) -> anyhow::Error {
    let cut_short = e.downcast_ref::<ReadError>().and_then(ReadError::cut_short_gzip);
    match cut_short {
        Some(path) if options.cut_short_is_pending => {
            tracing::warn!(path = %path.display(), "gzip file ends before its end: waiting for it to change");
            Pending(path.to_path_buf()).into()
        }
        _ => e,
    }
}

/// The linker on its blocking thread: the small tables read under the cohort rule, then linked;
/// or the last link, when none of what it read changed. With them, the SHA-256 of the link key
/// (see [`LinkKey`]), which derived tables and the checksum cache record.
async fn link_cohort(
    config: &Config,
    side: &input::LinkerTablePaths,
    integrity: &Arc<crate::integrity::Integrity>,
    with_stays: bool,
    options: &BuildOptions,
) -> anyhow::Result<(Arc<Links>, linker::LinkInputs, Option<String>)> {
    let (cfg, side, integrity) = (config.clone(), side.clone(), Arc::clone(integrity));
    let (alive, cache) = (options.cancel.clone(), options.link_cache.clone());
    let edstays = side.edstays.clone().filter(|_| with_stays);
    tokio::task::spawn_blocking(move || -> anyhow::Result<(Arc<Links>, linker::LinkInputs, Option<String>)> {
        let tables = linker::LinkTables {
            cxr_metadata: side.cxr_metadata.as_deref(),
            edstays: edstays.as_deref(),
            reflacx_phases: &side.reflacx_phases,
            master_sheet: side.master_sheet.as_deref(),
        };
        let key = LinkKey::of(&cfg, &tables, &integrity.sums);
        if let Some((links, inputs)) = cache.as_ref().zip(key.as_ref()).and_then(|(c, k)| c.get(k)) {
            tracing::info!("linker tables unchanged: the last link is reused");
            return Ok((links, inputs, key.as_ref().map(LinkKey::digest)));
        }
        let rule = crate::cohort::CohortRule::load(&cfg.cohort)?;
        let sha256 = |p: &Path| integrity.table_check(p);
        let settings = linker::LinkSettings {
            profile: cfg.profile,
            window_days: cfg.window_days,
            rule: &rule,
            sha256: &sha256,
            cancel: &alive,
        };
        let (links, inputs) = linker::link(tables, settings)?;
        let links = Arc::new(links);
        if let Some((cache, key)) = cache.as_ref().zip(key.as_ref()) {
            cache.put(key.clone(), &links, &inputs);
        }
        Ok((links, inputs, key.as_ref().map(LinkKey::digest)))
    })
    .await?
}

/// The shrink guard (see [`shrink`]); an edstays being written keeps its last count.
fn check_linker_rows(
    config: &Config,
    inputs: &linker::LinkInputs,
    cohort_now: usize,
    stays_pending: Option<&Path>,
    accept_shrink: bool,
) -> anyhow::Result<()> {
    let mut rows = shrink::LinkerRows::of(config, inputs);
    if let Some(edstays) = stays_pending {
        rows.carry(config, edstays);
    }
    if !accept_shrink {
        rows.check(config, inputs, cohort_now)?;
    }
    rows.record(&config.output).with_context(|| format!("recording linker rows in {}", config.output.display()))
}

/// What the jobs of a build did, gathered for the summary.
#[derive(Default)]
struct Report {
    tables: BTreeMap<String, TableCounts>,
    failed: BTreeMap<String, String>,
    pending: Vec<String>,
    /// Files of the pending tables that ended inside a gzip member.
    incomplete_inputs: Vec<PathBuf>,
    removed_tables: Vec<String>,
    /// Table jobs that ended well, and of them those the planner found unchanged (not read).
    table_jobs: usize,
    unchanged: usize,
    /// Rows rejected by the tables read this build, by reason.
    rejects_by_reason: BTreeMap<crate::pipeline::batch::DefectKind, u64>,
}

impl Report {
    fn fail(&mut self, key: String, error: &dyn std::fmt::Display) {
        self.failed.insert(key, crate::telemetry::bounded_text(&error.to_string()));
    }

    fn merge(&mut self, other: Report) {
        self.tables.extend(other.tables);
        self.failed.extend(other.failed);
        self.pending.extend(other.pending);
        self.incomplete_inputs.extend(other.incomplete_inputs);
        self.removed_tables.extend(other.removed_tables);
        self.table_jobs += other.table_jobs;
        self.unchanged += other.unchanged;
        for (reason, n) in other.rejects_by_reason {
            *self.rejects_by_reason.entry(reason).or_default() += n;
        }
    }
}

/// Every table job, `parallel_tables` at a time; a table whose input is still being written
/// keeps its previous output and counts.
async fn run_table_jobs(
    ctx: &Arc<BuildContext>,
    side: &input::LinkerTablePaths,
    options: &BuildOptions,
) -> anyhow::Result<Report> {
    let (config, output) = (&ctx.config, &ctx.config.output);
    let mut report = Report::default();
    let jobs = discover_jobs(config, side).context("finding the input's tables")?;
    let mut planned: std::collections::HashSet<String> = jobs.iter().map(|j| j.key.clone()).collect();
    // A table that is there but cannot be read as it is fails and keeps its outputs: it is
    // planned, never taken for a table removed from the input.
    for refused in input::refused_tables(config).context("finding the input's tables")? {
        tracing::error!(table = %refused.key, error = %refused.message, "table not read; its previous output is kept");
        planned.insert(refused.key.clone());
        report.fail(refused.key, &refused.message);
    }
    report.removed_tables = vanished::remove_vanished(config, &ctx.dirs, &ctx.integrity.sums, &planned)
        .with_context(|| format!("removing the outputs of tables gone from the input in {}", output.display()))?;
    let runs = jobs.iter().filter(|j| !options.unstable.contains(&j.path));
    let (count, bytes) = runs.fold((0, 0), |(n, b), j| (n + 1, b + std::fs::metadata(&j.path).map_or(0, |m| m.len())));
    ctx.progress.begin(count, bytes);
    let semaphore = Arc::new(tokio::sync::Semaphore::new(config.parallel_tables));
    let mut set = tokio::task::JoinSet::new();
    for job in jobs {
        if options.unstable.contains(&job.path) {
            tracing::info!(table = %job.key, "input still being written: previous output kept");
            if let Some(m) = state::load_manifest(output, &job.key) {
                report.tables.insert(job.key.clone(), m.counts);
            }
            report.pending.push(job.key);
            continue;
        }
        let (ctx, sem) = (Arc::clone(ctx), Arc::clone(&semaphore));
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            let key = job.key.clone();
            (key, run_table_job(ctx, job).await)
        });
    }
    while let Some(done) = set.join_next().await {
        match done {
            Ok((key, Ok(outcome))) => {
                report.table_jobs += 1;
                report.unchanged += usize::from(outcome.unchanged);
                for (reason, n) in &outcome.rejects_by_reason {
                    *report.rejects_by_reason.entry(*reason).or_default() += n;
                }
                report.tables.insert(key, outcome.counts);
            }
            // A stopped or failed job's staging folder went with it (see `Staging`).
            Ok((_, Err(e))) if e.is_cancelled() => {}
            Ok((key, Err(e))) if options.cut_short_is_pending && e.cut_short_gzip().is_some() => {
                let path = e.cut_short_gzip().map(Path::to_path_buf).unwrap_or_default();
                tracing::warn!(table = %key, path = %path.display(), "gzip file ends before its end: waiting for it to change; previous output kept");
                if let Some(m) = state::load_manifest(output, &key) {
                    report.tables.insert(key.clone(), m.counts);
                }
                report.pending.push(key);
                report.incomplete_inputs.push(path);
            }
            Ok((key, Err(e))) => {
                tracing::error!(table = %key, error = %crate::telemetry::bounded_text(&e.to_string()), "table failed; its previous output is kept");
                report.fail(key, &e);
            }
            Err(e) => report.fail(job_keys::FAILED_INTERNAL.into(), &e),
        }
    }
    Ok(report)
}

/// cxr_meta, the fixed side tables and the copied folders; with edstays still being written,
/// the stay-linked ones keep their previous output and counts.
async fn write_derived_tables(ctx: &Arc<BuildContext>, stays_known: bool) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let derived_ctx = Arc::clone(ctx);
    let derived = tokio::task::spawn_blocking(move || -> Result<Vec<(String, TableCounts)>, JobError> {
        let mut v = if stays_known { write_cxr_meta(&derived_ctx)? } else { Vec::new() };
        v.extend(side_tables::write_fixed_side_tables(&derived_ctx, stays_known)?);
        v.extend(folders::sync_all(&derived_ctx)?);
        Ok(v)
    })
    .await?;
    if !stays_known {
        for job in job_keys::STAY_LINKED {
            if let Some(m) = state::load_manifest(&ctx.config.output, job) {
                report.tables.insert(job.to_string(), m.counts);
            }
        }
    }
    match derived {
        Ok(v) => report.tables.extend(v),
        Err(e) => report.fail(job_keys::FAILED_DERIVED.into(), &e),
    }
    let damaged = ctx.integrity.mismatched_files();
    if let Some(first) = damaged.first() {
        let error = format!("{} copied file(s): {}: {}", damaged.len(), first.display(), crate::sums::MISMATCH);
        report.fail(job_keys::FAILED_COPIES.into(), &error);
    }
    Ok(report)
}

fn summarize(ctx: &BuildContext, report: Report, missing: Vec<String>, stays_known: bool, started: Instant) -> Summary {
    let (config, links) = (&ctx.config, &ctx.links);
    let previous = previous_stay_counts(&config.output);
    let both_dicoms = links.eye_gaze_dicoms.intersection(&links.reflacx_dicoms).count();
    let both_subjects = links.eye_gaze_subjects.intersection(&links.reflacx_subjects).count();
    Summary {
        profile: config.profile,
        cohort: CohortSummary { kind: config.cohort.name(), size: links.cohort.len() },
        patients: links.cohort.len(),
        stays: if stays_known { links.stays() } else { previous.map_or(0, |p| p.0) },
        images: links.cxr_rows.len(),
        linked_images: if stays_known { links.linked_images() } else { previous.map_or(0, |p| p.1) },
        eye_gaze: SourceCounts { patients: links.eye_gaze_subjects.len(), images: links.eye_gaze_dicoms.len() },
        reflacx: SourceCounts { patients: links.reflacx_subjects.len(), images: links.reflacx_dicoms.len() },
        both: SourceCounts { patients: both_subjects, images: both_dicoms },
        images_by_view: summary::images_by_view(links),
        links_by_rule: summary::links_by_rule(links),
        window_days: config.window_days,
        tables: report.tables,
        table_jobs: report.table_jobs,
        unchanged_tables: report.unchanged,
        rejects_by_reason: report.rejects_by_reason,
        failed: report.failed,
        pending: report.pending,
        incomplete_inputs: report.incomplete_inputs,
        missing_datasets: missing,
        removed_tables: report.removed_tables,
        skipped_files: input::skipped_files(config),
        read_folders: read_set::read_folders(ctx),
        linker_skipped: links.warnings.clone(),
        datasets: ctx.integrity.provenance(config),
        program: crate::integrity::Program::this(),
        settings: crate::integrity::Settings::of(config),
        files: ctx.integrity.files.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        peak_rss_bytes: crate::sys::peak_rss_bytes(),
        duration_seconds: started.elapsed().as_secs_f64(),
    }
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
fn check_inputs(config: &Config, side: &input::LinkerTablePaths) -> anyhow::Result<Vec<String>> {
    if !config.input.is_dir() {
        anyhow::bail!("input directory {} does not exist", config.input.display());
    }
    if let Some(r) = input::refused_tables(config)?.into_iter().find(|r| r.decides_cohort) {
        anyhow::bail!(
            "{}; this table decides the cohort, so nothing is built and the previous output is kept",
            r.message
        );
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
