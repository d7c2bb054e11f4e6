//! The command line: parses flags, runs one command, turns errors into a one-line cause.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use mimic_eye::synth;
use mimic_eye::ProgressBars;
use mimic_eye::{Config, ConfigFile, Overrides, Profile};

#[derive(Parser)]
#[command(
    name = "mimic-eye",
    version,
    about = "Builds the MIMIC-Eye dataset from its parent datasets and keeps it current"
)]
struct Cli {
    /// Log format: human on a terminal, json for journald.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

/// What to build and where: each flag given overrides the config file.
#[derive(clap::Args)]
struct Settings {
    /// The config file (TOML; see config/mimic-eye.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The parent datasets: a PhysioNet wget mirror (`physionet.org/files` or the folder above
    /// it) or a folder holding mimiciv/, mimic-iv-ed/, mimic-cxr-jpg/, ….
    #[arg(long)]
    input: Option<PathBuf>,
    /// The folder MIMIC-Eye is written to; nothing is written outside it.
    #[arg(long)]
    output: Option<PathBuf>,
    /// paper: the article's rules; release: what the published dataset's files show.
    #[arg(long, value_enum)]
    profile: Option<Profile>,
    /// Link a study with no stay around it to the nearest stay within this many days (0: off).
    #[arg(long)]
    window_days: Option<u32>,
    /// Who to build for: eye-tracking (the published dataset's patients), cxr (every
    /// MIMIC-CXR-JPG patient) or subjects:PATH (one subject_id per line).
    #[arg(long)]
    cohort: Option<mimic_eye::CohortKind>,
}

impl Settings {
    /// The config file merged with the flags, the datasets found in the input.
    fn resolve(self) -> anyhow::Result<Config> {
        let (config, overrides) = self.into_parts();
        let file = match &config {
            Some(path) => ConfigFile::load(path)?,
            None => ConfigFile::default(),
        };
        Config::resolve(file, overrides)
    }

    /// As `resolve`, for commands that only read the input: no output folder needed.
    fn resolve_input_only(mut self) -> anyhow::Result<Config> {
        let file_has_output = match &self.config {
            Some(path) => ConfigFile::load(path)?.output.is_some(),
            None => false,
        };
        if self.output.is_none() && !file_has_output {
            // Never written to or read by these commands; only `Config` insists on one. Not
            // the current folder: an input below it would count as inside the output.
            self.output = Some(std::env::temp_dir().join("mimic-eye-no-output"));
        }
        self.resolve()
    }

    /// The config file to load, and the flags that override it.
    fn into_parts(self) -> (Option<PathBuf>, Overrides) {
        let Settings { config, input, output, profile, window_days, cohort } = self;
        (config, Overrides { input, output, profile, window_days, metrics_addr: None, cohort })
    }
}

#[derive(Subcommand)]
enum Command {
    /// One build of the output tree, then exit.
    Build {
        #[command(flatten)]
        settings: Settings,
        /// Rewrite every output even if its inputs did not change.
        #[arg(long)]
        full: bool,
        /// Accept a CXR metadata, edstays, REFLACX phase or master sheet that lost most of its
        /// rows since the last build (otherwise the build fails and keeps the previous output).
        #[arg(long)]
        accept_shrink: bool,
    },
    /// What the input holds: each dataset's folder, version, tables and SHA256SUMS.txt, and
    /// what a build would miss. Exits non-zero when a required dataset is missing.
    Inputs {
        #[command(flatten)]
        settings: Settings,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Hash every file each dataset's SHA256SUMS.txt lists and report mismatches, listed
        /// files that are missing and unlisted files present (slow: reads the whole download).
        /// Exits non-zero on a mismatch or a missing file.
        #[arg(long)]
        verify: bool,
    },
    /// Check an output against its SHA256SUMS.txt: re-hashes every listed file and names every
    /// changed, missing and extra file (exits non-zero if there is any).
    Verify {
        /// The output folder (holding SHA256SUMS.txt).
        #[arg(long)]
        output: PathBuf,
    },
    /// Download from PhysioNet only what the cohort needs: each version's SHA256SUMS.txt, the
    /// tables, then the cohort's images and reports, verified, into INPUT/<slug>/<version>/ as
    /// `wget -r` lays them out. Credentials from ~/.netrc, or --user with the password from
    /// MIMIC_EYE_PHYSIONET_PASSWORD or a prompt.
    Fetch {
        /// The folder to fill (a wget mirror's physionet.org/files, or a new folder).
        #[arg(long)]
        input: PathBuf,
        /// A config file: its physionet_url, [versions] and cohort are used.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Whose files: eye-tracking (default), cxr or subjects:PATH.
        #[arg(long)]
        cohort: Option<mimic_eye::CohortKind>,
        /// Parallel keep-alive connections (PhysioNet limits each one, not their sum).
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// The file server (default https://physionet.org/files/).
        #[arg(long)]
        url: Option<String>,
        /// PhysioNet user name (the password is asked for, or read from
        /// MIMIC_EYE_PHYSIONET_PASSWORD; never give it on the command line).
        #[arg(long)]
        user: Option<String>,
        /// Print the plan (files and bytes per dataset) after fetching the listings and the
        /// tables that decide the cohort; fetch nothing else.
        #[arg(long)]
        dry_run: bool,
        /// Write the plan's URLs to FILE as a `wget -i` list; fetch nothing else.
        #[arg(long)]
        list: Option<PathBuf>,
    },
    /// The daemon: build, then keep the output current as the input changes.
    Run {
        #[command(flatten)]
        settings: Settings,
        /// Where /metrics, /healthz and /status listen (loopback unless the config allows more).
        #[arg(long)]
        metrics_addr: Option<std::net::SocketAddr>,
    },
    /// Write a fake input tree in the layout of the parent datasets, defects planted.
    Synth(SynthArgs),
    /// Split one table by subject_id for a cohort (the per-patient split alone; for benchmarks).
    Split {
        /// The table (.csv or .csv.gz) with a subject_id column.
        #[arg(long)]
        table: PathBuf,
        /// A CSV with a subject_id column: the cohort.
        #[arg(long)]
        cohort: PathBuf,
        #[arg(long)]
        output: PathBuf,
    },
    /// Read and decode one table and nothing else: the reading thread's ceiling (for benchmarks).
    Decode {
        /// The table (.csv or .csv.gz).
        #[arg(long)]
        table: PathBuf,
        /// Also hash the file's bytes with SHA-256 on the reading thread (as a build does for a
        /// file its dataset's SHA256SUMS.txt lists) and print the digest.
        #[arg(long)]
        sha256: bool,
    },
    /// Synthesise a small input, build it, print the headline counts.
    Demo {
        /// Keep the demo here instead of a temporary folder.
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Profile::Paper)]
        profile: Profile,
    },
}

/// `mimic-eye synth`'s flags.
#[derive(clap::Args)]
struct SynthArgs {
    #[arg(long)]
    output: PathBuf,
    #[arg(long, default_value_t = 40)]
    patients: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 20)]
    rows_per_patient: usize,
    /// Rows per subject in chartevents (default: --rows-per-patient).
    #[arg(long)]
    chart_rows_per_patient: Option<usize>,
    /// Rows of the big tables grouped by subject (like MIMIC) or shuffled.
    #[arg(long, value_enum, default_value_t = synth::Order::Grouped)]
    order: synth::Order,
    /// Patients outside the cohort (only in the clinical tables).
    #[arg(long)]
    others: Option<usize>,
    /// Write plain .csv instead of .csv.gz for the MIMIC tables.
    #[arg(long)]
    plain: bool,
    /// Use these real MIMIC-IV tables (e.g. the demo) instead of fake ones.
    #[arg(long)]
    mimiciv: Option<PathBuf>,
    /// short: <output>/mimiciv/hosp, …; physionet: a wget mirror,
    /// <output>/physionet.org/files/<slug>/<version>/… with index.html and SHA256SUMS.txt.
    #[arg(long, value_enum, default_value_t = synth::LayoutKind::Short)]
    layout: synth::LayoutKind,
    /// The MIMIC-IV version folder of the physionet layout (1.0 puts admissions, patients
    /// and transfers in core/).
    #[arg(long, value_enum, default_value_t = synth::MimicIvVersion::V2_2)]
    mimiciv_version: synth::MimicIvVersion,
    /// Add this many chest X-ray patients in no eye-tracking dataset, as a real mirror has
    /// (65,000: about a million files in 360,000 folders, index.html pages included).
    #[arg(long, default_value_t = 0)]
    cxr_bulk_patients: u64,
}

impl SynthArgs {
    fn spec(self) -> synth::SynthSpec {
        synth::SynthSpec {
            patients: self.patients,
            seed: self.seed,
            rows_per_patient: self.rows_per_patient,
            chart_rows_per_patient: self.chart_rows_per_patient,
            order: self.order,
            others: self.others.unwrap_or(self.patients),
            gzip: !self.plain,
            mimiciv: self.mimiciv,
            layout: match self.layout {
                synth::LayoutKind::Short => synth::Layout::Short,
                synth::LayoutKind::Physionet => synth::Layout::Physionet { mimiciv: self.mimiciv_version },
            },
            cxr_bulk_patients: self.cxr_bulk_patients,
        }
    }
}

fn main() -> ExitCode {
    mimic_eye::init_process();
    let cli = Cli::parse();
    // Build, synth and demo print their result; their logs stay at warnings unless asked.
    let default_log = if matches!(cli.command, Command::Run { .. }) { "info" } else { "warn" };
    init_logging(cli.log_format, default_log);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mimic-eye: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line.
fn one_line(e: &anyhow::Error) -> String {
    let text = e.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": ").replace('\n', " ");
    mimic_eye::bounded_text(&text)
}

fn init_logging(format: LogFormat, default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("MIMIC_EYE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Build { settings, full, accept_shrink } => build(settings, full, accept_shrink),
        Command::Inputs { settings, json, verify } => inputs(settings, json, verify),
        Command::Verify { output } => verify(&output),
        Command::Fetch { input, config, cohort, connections, url, user, dry_run, list } => {
            let options = mimic_eye::FetchOptions { input, config, cohort, connections, url, user, dry_run, list };
            mimic_eye::fetch(options).map(|_| ())
        }
        Command::Run { settings, metrics_addr } => {
            let (config, overrides) = settings.into_parts();
            let overrides = Overrides { metrics_addr, ..overrides };
            let rt = runtime()?;
            let result = rt.block_on(mimic_eye::run_daemon(config, overrides));
            // Blocking threads of a cancelled build get a moment to finish, not forever.
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            result
        }
        Command::Synth(args) => {
            let output = args.output.clone();
            let planted = synth::generate(&output, &args.spec())?;
            println!("wrote a synthetic input tree to {}", output.display());
            println!("{}", planted.describe());
            Ok(())
        }
        Command::Split { table, cohort, output } => split(table, &cohort, output),
        Command::Decode { table, sha256 } => decode(&table, sha256),
        Command::Demo { dir, profile } => demo(dir, profile),
    }
}

fn build(settings: Settings, full: bool, accept_shrink: bool) -> anyhow::Result<()> {
    let config = settings.resolve()?;
    // Checked before the lock: a wrong --input must leave no trace in the output.
    anyhow::ensure!(config.input.is_dir(), "input directory {} does not exist", config.input.display());
    let _lock = mimic_eye::lock_output(&config.output)?;
    let options = mimic_eye::BuildOptions::one_shot(full, accept_shrink);
    let summary = runtime()?.block_on(mimic_eye::build(config.clone(), ProgressBars::on_terminal(), options))?;
    println!("{}", summary.headline());
    println!("output: {}", config.output.display());
    if !summary.failed.is_empty() {
        let first = summary.failed.iter().next().map(|(k, v)| format!("{k}: {v}")).unwrap_or_default();
        anyhow::bail!("{} table(s) failed, first: {first}", summary.failed.len());
    }
    Ok(())
}

fn inputs(settings: Settings, json: bool, verify: bool) -> anyhow::Result<()> {
    let config = settings.resolve_input_only()?;
    let mut inventory = mimic_eye::Inventory::gather(&config);
    if verify {
        inventory.verify();
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&inventory)?);
    } else {
        print!("{}", inventory.text());
    }
    if !inventory.ok() {
        anyhow::bail!("a required input is missing");
    }
    if let Some(problem) = inventory.verify_problem() {
        anyhow::bail!("{problem}");
    }
    Ok(())
}

fn verify(output: &Path) -> anyhow::Result<()> {
    let v = mimic_eye::verify_output(output)?;
    print!("{}", v.text());
    if !v.clean() {
        anyhow::bail!(
            "{} does not match its SHA256SUMS.txt: {} changed, {} missing, {} extra, {} listed outside it, {} malformed line(s)",
            output.display(),
            v.changed.count,
            v.missing.count,
            v.extra.count,
            v.outside.count,
            v.malformed.count
        );
    }
    Ok(())
}

fn split(table: PathBuf, cohort: &Path, output: PathBuf) -> anyhow::Result<()> {
    let ids = mimic_eye::SmallTable::read(cohort)?;
    let col = ids.require("subject_id")?;
    let subjects = ids
        .rows
        .iter()
        .map(|r| mimic_eye::SubjectId::parse(r.fields.field(col)))
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading the cohort {}", cohort.display()))?;
    let config = Config::resolve(
        ConfigFile::default(),
        Overrides {
            // A bare file name's parent is "", which is the current directory.
            input: Some(table.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).into()),
            output: Some(output),
            ..Default::default()
        },
    )?;
    let _lock = mimic_eye::lock_output(&config.output)?;
    let started = std::time::Instant::now();
    let cohort = mimic_eye::Cohort::from_subjects(subjects);
    let outcome = runtime()?.block_on(mimic_eye::split_one(config, table, cohort))?;
    let secs = started.elapsed().as_secs_f64();
    let c = outcome.counts;
    println!(
        "{{\"rows\": {}, \"written\": {}, \"outside_cohort\": {}, \"rejected\": {}, \"input_bytes\": {}, \"seconds\": {secs:.3}, \"rows_per_second\": {:.0}, \"peak_rss_bytes\": {}, \"gzip_backend\": \"{}\"}}",
        c.read, c.written, c.outside_cohort, c.rejected, outcome.input_bytes, c.read as f64 / secs, mimic_eye::peak_rss_bytes(),
        mimic_eye::gzip::BACKEND
    );
    Ok(())
}

fn decode(table: &Path, sha256: bool) -> anyhow::Result<()> {
    use mimic_eye::{Sha256Check, Source};
    let started = std::time::Instant::now();
    let check = if sha256 { Sha256Check::Compute } else { Sha256Check::Off };
    let mut source = Source::open(table, check).with_context(|| format!("opening {}", table.display()))?;
    let mut decoded = 0u64;
    let mut buf = Vec::new();
    loop {
        let n = source.fill(&mut buf).with_context(|| format!("reading {}", table.display()))?;
        if n == 0 {
            break;
        }
        decoded += n as u64;
        source.recycle(std::mem::take(&mut buf));
    }
    let secs = started.elapsed().as_secs_f64();
    let input = source.input_read.load(std::sync::atomic::Ordering::Relaxed);
    let digest = match source.sha256() {
        Some(d) => format!(", \"sha256\": \"{}\"", mimic_eye::hex(&d)),
        None => String::new(),
    };
    println!(
        "{{\"input_bytes\": {input}, \"decoded_bytes\": {decoded}, \"seconds\": {secs:.3}, \"decoded_mb_per_second\": {:.0}, \"gzip_backend\": \"{}\"{digest}}}",
        decoded as f64 / secs / 1e6,
        mimic_eye::gzip::BACKEND
    );
    Ok(())
}

fn demo(dir: Option<PathBuf>, profile: Profile) -> anyhow::Result<()> {
    let (root, tmp) = match dir {
        Some(d) => (d, None),
        None => {
            let t = tempfile::Builder::new().prefix("mimic-eye-demo-").tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let input = root.join("input");
    let output = root.join("output");
    let planted = synth::generate(&input, &synth::SynthSpec::demo())?;
    let config = Config::resolve(
        ConfigFile::default(),
        Overrides {
            input: Some(input.clone()),
            output: Some(output.clone()),
            profile: Some(profile),
            ..Default::default()
        },
    )?;
    let summary = runtime()?.block_on(mimic_eye::build(config, ProgressBars::on_terminal(), Default::default()))?;
    println!("MIMIC-Eye demo build (synthetic data, profile {})", summary.profile.as_str());
    println!("  {}", summary.headline());
    println!("  planted: {}", planted.describe());
    let rejected: u64 = summary.tables.values().map(|c| c.rejected).sum();
    println!("  tables: {}, rows rejected (planted defects): {rejected}", summary.tables.len());
    if tmp.is_some() {
        println!("  (built in a temporary folder, removed on exit; use --dir DIR to keep it)");
    } else {
        println!("  input:  {}\n  output: {}", input.display(), output.display());
    }
    Ok(())
}
