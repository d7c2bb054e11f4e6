//! The command line: parses flags, runs one command, turns errors into a one-line cause.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use mimic_eye::cli::{Cli, Command, LogFormat, LogLevel, Settings};
use mimic_eye::synth;
use mimic_eye::ProgressBars;
use mimic_eye::{Config, ConfigFile, Overrides, Profile};

fn main() -> ExitCode {
    mimic_eye::init_process();
    let cli = Cli::parse();
    // Build, synth and demo print their result; their logs stay at warnings unless asked.
    let default_log = if matches!(cli.command, Command::Run { .. }) { "info" } else { "warn" };
    if let Err(e) = init_logging(cli.log_format, cli.log_level, default_log) {
        eprintln!("mimic-eye: {}", one_line(&e));
        return ExitCode::from(2);
    }
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

/// `--log-level`, else `MIMIC_EYE_LOG` (a level or per-module filters), else `default`; a
/// `MIMIC_EYE_LOG` that does not parse is an error, not silently the default.
fn init_logging(format: LogFormat, level: Option<LogLevel>, default: &str) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match (level, std::env::var("MIMIC_EYE_LOG")) {
        (Some(level), _) => EnvFilter::new(level.as_str()),
        (None, Ok(spec)) => EnvFilter::try_new(&spec).map_err(|e| {
            anyhow::anyhow!(
                "MIMIC_EYE_LOG={spec:?} is not a log filter (error, warn, info, debug, trace, or module=level): {e}"
            )
        })?,
        (None, Err(_)) => EnvFilter::new(default),
    };
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let fmt =
        tracing_subscriber::fmt::layer().with_writer(mimic_eye::LogWriter).with_ansi(std::io::stderr().is_terminal());
    let fmt = match format {
        LogFormat::Json => fmt.json().with_filter(filter).boxed(),
        LogFormat::Human => fmt.with_filter(filter).boxed(),
    };
    // Warnings are counted whatever the level shown, for the closing summary.
    let counter = CountWarnings.with_filter(tracing_subscriber::filter::LevelFilter::WARN);
    tracing_subscriber::registry().with(fmt).with(counter).init();
    Ok(())
}

/// Warnings logged by this process.
static WARNINGS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

struct CountWarnings;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CountWarnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *event.metadata().level() == tracing::Level::WARN {
            WARNINGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// `--config`, else the system's config file when there is one.
fn config_or_default(config: Option<PathBuf>) -> Option<PathBuf> {
    config.or_else(|| {
        let default = Path::new(mimic_eye::cli::DEFAULT_CONFIG);
        default.exists().then(|| default.to_path_buf())
    })
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
            let config = config_or_default(config);
            let overrides = Overrides { metrics_addr, ..overrides };
            let rt = runtime()?;
            let result = rt.block_on(mimic_eye::run_daemon(config, overrides));
            // Blocking threads of a cancelled build get a moment to finish, not forever.
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            result
        }
        Command::Validate { mut settings } => {
            settings.config = config_or_default(settings.config);
            mimic_eye::validate(settings)
        }
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "mimic-eye", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(command).render(&mut std::io::stdout()).context("writing the man page")
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
    let summary = runtime()?.block_on(mimic_eye::build_until_interrupted(
        config.clone(),
        ProgressBars::on_terminal(),
        options,
    ))?;
    println!("{}", summary.closing_text(WARNINGS.load(std::sync::atomic::Ordering::Relaxed)));
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
    let rounded = |v: f64, places: i32| (v * 10f64.powi(places)).round() / 10f64.powi(places);
    let report = serde_json::json!({
        "rows": c.read,
        "written": c.written,
        "outside_cohort": c.outside_cohort,
        "rejected": c.rejected,
        "input_bytes": outcome.input_bytes,
        "seconds": rounded(secs, 3),
        "rows_per_second": rounded(c.read as f64 / secs, 0),
        "peak_rss_bytes": mimic_eye::peak_rss_bytes(),
        "gzip_backend": mimic_eye::gzip::BACKEND,
    });
    println!("{report}");
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
    let mut report = serde_json::json!({
        "input_bytes": input,
        "decoded_bytes": decoded,
        "seconds": (secs * 1000.0).round() / 1000.0,
        "decoded_mb_per_second": (decoded as f64 / secs / 1e6).round(),
        "gzip_backend": mimic_eye::gzip::BACKEND,
    });
    if let Some(d) = source.sha256() {
        report["sha256"] = mimic_eye::hex(&d).into();
    }
    println!("{report}");
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
