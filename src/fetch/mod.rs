//! `mimic-eye fetch`: from a PhysioNet account to an input tree holding exactly what the
//! cohort needs. It fills `<input>/<slug>/<version>/<path>` as `wget -r` fills
//! `physionet.org/files/`, so `inputs`, `build`, `run` and a later `wget -N` work on it as
//! they are; see [`plan`] for what and in which order, [`download`] for how one file is
//! fetched, [`pool`] for the connections.

mod auth;
mod download;
mod plan;
mod pool;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};

use crate::cohort::CohortKind;
use crate::config::ConfigFile;
use crate::layout::{DatasetKey, Versions};
use download::Task;
use plan::Source;
use pool::Pool;
pub use pool::Totals;

/// PhysioNet's file server.
pub(crate) const DEFAULT_URL: &str = "https://physionet.org/files/";

/// What `fetch` is asked to do.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// The folder to fill (`physionet.org/files` of a wget mirror, or a new one).
    pub input: PathBuf,
    /// A config file (its `physionet_url`, `[versions]` and `cohort` are used).
    pub config: Option<PathBuf>,
    /// Whose files to fetch (default: the config's, else eye-tracking).
    pub cohort: Option<CohortKind>,
    /// Parallel keep-alive connections.
    pub connections: usize,
    /// The file server's base URL (default PhysioNet's).
    pub url: Option<String>,
    /// The PhysioNet user (password from the environment or a prompt); else `~/.netrc`.
    pub user: Option<String>,
    /// Print the plan (after fetching the listings and the tables that decide the cohort).
    pub dry_run: bool,
    /// Write the plan's URLs as a `wget -i` list instead of fetching the cohort's files.
    pub list: Option<PathBuf>,
}

/// Runs a fetch; the summary is printed and returned.
pub fn fetch(options: FetchOptions) -> anyhow::Result<Totals> {
    let started = Instant::now();
    let file = match &options.config {
        Some(p) => ConfigFile::load(p)?,
        None => ConfigFile::default(),
    };
    let base = options.url.clone().or(file.physionet_url.clone()).unwrap_or_else(|| DEFAULT_URL.to_string());
    let base = if base.ends_with('/') { base } else { format!("{base}/") };
    let cohort = options.cohort.clone().or(file.cohort.clone()).unwrap_or_default();
    std::fs::create_dir_all(&options.input).with_context(|| format!("creating {}", options.input.display()))?;
    let host = base.split("://").nth(1).and_then(|r| r.split(['/', ':']).next()).unwrap_or_default().to_string();
    let credentials = auth::Credentials::find(&host, options.user.as_deref())?;
    let pool = Pool::new(options.connections, credentials.as_ref().map(auth::Credentials::header))?;
    tracing::info!(url = %base, connections = options.connections, user = ?credentials.as_ref().map(|c| &c.user), "fetching from PhysioNet");
    let verified = crate::fetched::Verified::open(&options.input);
    let sources = discover(&pool, &base, &options.input, &file.versions)?;
    let mut totals = Totals::default();
    // 1. Each version's SHA256SUMS.txt (a published version's listing never changes).
    let listings = sources.iter().filter(|s| !s.listing().is_file()).map(|s| s.task(crate::sums::SUMS_FILE, None));
    totals.add(&pool.run("listings", listings.collect(), &verified)?);
    // 2. The tables (all of them; only those deciding the cohort for a plan).
    let planning = options.dry_run || options.list.is_some();
    let tables = table_tasks(&sources, planning)?;
    totals.add(&pool.run("tables", tables, &verified)?);
    // 3. The cohort, by the build's own rule, and its images and reports.
    let config = cohort_config(&options.input, &cohort, &sources)?;
    let files = crate::pipeline::cohort_files(&config).context("linking the cohort from the fetched tables")?;
    println!("cohort {}: {} patients, {} images", cohort, files.patients, files.images);
    if planning {
        return print_plan(&pool, &sources, &files, options.list.as_deref(), &verified);
    }
    let by_zip = sources.iter().find(|s| s.key == DatasetKey::MimicCxr).and_then(|s| reports_zip(&pool, s, &files));
    let reports_zipped = by_zip.is_some();
    if let Some(zip) = by_zip {
        totals.add(&pool.run("reports", vec![zip], &verified)?);
    }
    for source in sources.iter().filter(|s| !(s.key == DatasetKey::MimicCxr && reports_zipped)) {
        let (count, run) = cohort_tasks(source, &files)?;
        if count > 0 {
            totals.add(&pool.run_streamed(source.key.title(), count, run, &verified)?);
        }
    }
    verified.flush();
    totals.seconds = started.elapsed().as_secs_f64();
    println!("{}", totals.text());
    if totals.failed > 0 {
        bail!(
            "{} file(s) could not be fetched (first: {})",
            totals.failed,
            totals.first_error.clone().unwrap_or_default()
        );
    }
    Ok(totals)
}

/// The version of each dataset: pinned in `[versions]`, else the newest the server lists
/// (printed: never a silent choice). A dataset the server does not have is left out, said.
fn discover(pool: &Pool, base: &str, input: &Path, pins: &Versions) -> anyhow::Result<Vec<Source>> {
    let mut sources = Vec::new();
    for key in DatasetKey::ALL {
        let version = match pins.get(key) {
            Some(v) => v.clone(),
            None => {
                let index = format!("{base}{}/", key.slug());
                let Some(html) = pool.get_text(&index)? else {
                    println!("{}: not on the server ({index}): left out", key.title());
                    continue;
                };
                let Some(latest) = plan::versions_in_index(&html).pop() else {
                    println!("{}: no version folder listed at {index}: left out", key.title());
                    continue;
                };
                println!(
                    "{}: version {latest}, the newest the server lists (pin it with [versions] {} = \"{latest}\")",
                    key.title(),
                    key.config_key()
                );
                latest
            }
        };
        sources.push(Source::new(input, base, key, &version));
    }
    Ok(sources)
}

/// The tables of every dataset (with `only_cohort`, those that decide the cohort).
fn table_tasks(sources: &[Source], only_cohort: bool) -> anyhow::Result<Vec<Task>> {
    let mut tasks = Vec::new();
    for source in sources {
        let decides = |rel: &str| {
            rel.contains("metadata_phase_") || rel.ends_with("master_sheet.csv") || rel.contains("-metadata.csv")
        };
        let key = source.key;
        let mut keep = |rel: &str| plan::is_table(key, rel) && (!only_cohort || decides(rel));
        plan::each_listed(source, &mut keep, &mut |task| {
            tasks.push(task);
            true
        })
        .with_context(|| format!("reading {}", source.listing().display()))?;
    }
    Ok(tasks)
}

/// The config the cohort is linked with: the fetched tree, the fetched versions pinned.
fn cohort_config(input: &Path, cohort: &CohortKind, sources: &[Source]) -> anyhow::Result<crate::config::Config> {
    let mut versions = Versions::default();
    for s in sources {
        *versions.get_mut(s.key) = Some(s.version.clone());
    }
    let file = ConfigFile {
        input: Some(input.to_path_buf()),
        // Never written: a config needs an output folder.
        output: Some(std::env::temp_dir().join("mimic-eye-fetch-plan")),
        cohort: Some(cohort.clone()),
        versions,
        ..Default::default()
    };
    crate::config::Config::resolve(file, Default::default())
}

/// A producer of one dataset's cohort tasks (images from its listing, reports by path), with
/// their count (0: nothing to fetch there). The listing is read twice, to count and to fetch,
/// rather than held.
fn cohort_tasks<'a>(
    source: &'a Source,
    files: &'a crate::pipeline::CohortFiles,
) -> anyhow::Result<(u64, pool::Producer<'a>)> {
    match source.key {
        DatasetKey::MimicCxrJpg => {
            let sets = plan::FolderSets::of(&source.folder, &files.folders);
            let mut count = 0;
            if !sets.is_empty() {
                plan::each_listed(source, &mut |rel| sets.holds(rel), &mut |_| {
                    count += 1;
                    true
                })
                .with_context(|| format!("reading {}", source.listing().display()))?;
            }
            let run: pool::Producer<'a> = Box::new(move |each: &mut dyn FnMut(Task) -> bool| {
                plan::each_listed(source, &mut |rel| sets.holds(rel), each).map(|_| ())
            });
            Ok((count, run))
        }
        // MIMIC-CXR's listing names only its top-level files: reports are fetched unverified.
        DatasetKey::MimicCxr => {
            let run: pool::Producer<'a> = Box::new(move |each: &mut dyn FnMut(Task) -> bool| {
                for report in &files.reports {
                    let Some(rel) = report.strip_prefix(&source.folder).ok().and_then(|r| r.to_str()) else { continue };
                    if !each(source.task(rel, None)) {
                        break;
                    }
                }
                Ok(())
            });
            Ok((files.reports.len() as u64, run))
        }
        _ => Ok((0, Box::new(|_: &mut dyn FnMut(Task) -> bool| Ok(())))),
    }
}

/// A report's size, roughly: MIMIC-CXR's 227,835 reports are a few KB each.
const REPORT_BYTES: u64 = 2_000;

/// The task of `mimic-cxr-reports.zip` when it is fewer bytes than the cohort's reports one by
/// one (a large cohort), or already there; `None` to fetch the reports one by one.
fn reports_zip(pool: &Pool, source: &Source, files: &crate::pipeline::CohortFiles) -> Option<Task> {
    let mut zip = None;
    plan::each_listed(source, &mut |rel| rel == crate::input::REPORTS_ZIP, &mut |task| {
        zip = Some(task);
        false
    })
    .ok()?;
    let zip = zip?;
    let by_one = files.reports.len() as u64 * REPORT_BYTES;
    let zip_bytes =
        std::fs::metadata(&zip.dest).map(|m| m.len()).ok().or_else(|| pool.sizes(std::slice::from_ref(&zip)).ok())?;
    let chosen = zip.dest.is_file() || zip_bytes < by_one;
    println!(
        "MIMIC-CXR reports: {} ({} reports, about {by_one} bytes one by one; the zip is {zip_bytes} bytes)",
        if chosen { crate::input::REPORTS_ZIP } else { "one file per study" },
        files.reports.len()
    );
    chosen.then_some(zip)
}

/// `--dry-run` and `--list`: every file the fetch would download, per dataset against its
/// listing, with the bytes the server gives for them.
fn print_plan(
    pool: &Pool,
    sources: &[Source],
    files: &crate::pipeline::CohortFiles,
    list: Option<&Path>,
    verified: &crate::fetched::Verified,
) -> anyhow::Result<Totals> {
    let mut urls = Vec::new();
    let mut totals = Totals::default();
    println!("plan:");
    for source in sources {
        let mut tasks = table_tasks(std::slice::from_ref(source), false)?;
        let (_, run) = cohort_tasks(source, files)?;
        run(&mut |t| {
            tasks.push(t);
            true
        })?;
        let listed = plan::each_listed(source, &mut |_| false, &mut |_| true).unwrap_or(0);
        let bytes = pool.sizes(&tasks)?;
        let (whole, exact) = whole_size(pool, source, listed)?;
        println!(
            "  {:<14} {:>8} files, {:>12} bytes, of {:>9} listed files, {}{:>15} bytes",
            source.key.title(),
            tasks.len(),
            bytes,
            listed,
            if exact { "" } else { "about " },
            whole
        );
        totals.planned_files += tasks.len() as u64;
        totals.planned_bytes += bytes;
        urls.extend(tasks.into_iter().map(|t| t.url));
    }
    println!("  total          {:>8} files, {:>12} bytes", totals.planned_files, totals.planned_bytes);
    println!("  (a dataset's whole size is the sum over its listing: HEAD of each file, or of every");
    println!("  n-th file of a listing over {WHOLE_EXACT_UP_TO} files, scaled: \"about\")");
    verified.flush();
    if let Some(list) = list {
        std::fs::write(list, urls.join("\n") + "\n").with_context(|| format!("writing {}", list.display()))?;
        println!("wrote {} URLs to {} (wget -i; it needs --user and --ask-password)", urls.len(), list.display());
    }
    Ok(totals)
}

/// Listings up to this many files are sized file by file; larger ones by a sample.
const WHOLE_EXACT_UP_TO: u64 = 2_000;
/// The files sampled to size a large listing.
const WHOLE_SAMPLE: u64 = 500;

/// The bytes of every file `source`'s listing names, and whether the sum is exact: a sample of
/// every n-th file, scaled, for a large listing (MIMIC-CXR-JPG lists 377,110 images; a HEAD
/// of each would take longer than fetching the cohort).
fn whole_size(pool: &Pool, source: &Source, listed: u64) -> anyhow::Result<(u64, bool)> {
    let stride = if listed <= WHOLE_EXACT_UP_TO { 1 } else { listed / WHOLE_SAMPLE };
    let (mut sample, mut i) = (Vec::new(), 0u64);
    plan::each_listed(source, &mut |_| true, &mut |task| {
        if i % stride == 0 {
            sample.push(task);
        }
        i += 1;
        true
    })
    .with_context(|| format!("reading {}", source.listing().display()))?;
    let sampled = pool.sizes(&sample)?;
    if stride == 1 || sample.is_empty() {
        return Ok((sampled, true));
    }
    Ok(((sampled as f64 * listed as f64 / sample.len() as f64) as u64, false))
}
