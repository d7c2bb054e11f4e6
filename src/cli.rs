//! The command line's shape: every command and flag, as `--help`, the man page and the shell
//! completions show them (`main.rs` runs them).

// Doc comments here are the `--help` text: written for users where a flag needs words.
#![allow(missing_docs)]

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::synth;
use crate::{Config, ConfigFile, Overrides, Profile};

/// Read by `run` and `validate` when no `--config` is given and the file exists.
pub const DEFAULT_CONFIG: &str = "/etc/mimic-eye/mimic-eye.toml";

#[derive(Parser)]
#[command(
    name = "mimic-eye",
    version = crate::version::text(),
    about = "Builds the MIMIC-Eye dataset from its parent datasets and keeps it current"
)]
pub struct Cli {
    /// Log format: human on a terminal, json for journald.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Log level (default: info for `run`, warn otherwise). Overrides MIMIC_EYE_LOG, which also
    /// takes per-module filters (`mimic_eye::daemon=debug`).
    #[arg(long, global = true, value_enum)]
    pub log_level: Option<LogLevel>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// What to build and where: each flag given overrides the config file.
#[derive(clap::Args)]
pub struct Settings {
    /// The config file (TOML; see config/mimic-eye.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The parent datasets: a PhysioNet wget mirror (`physionet.org/files` or the folder above
    /// it) or a folder holding mimiciv/, mimic-iv-ed/, mimic-cxr-jpg/, ….
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// The folder MIMIC-Eye is written to; nothing is written outside it.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// paper: the article's rules; release: what the published dataset's files show.
    #[arg(long, value_enum)]
    pub profile: Option<Profile>,
    /// Link a study with no stay around it to the nearest stay within this many days (0: off).
    #[arg(long)]
    pub window_days: Option<u32>,
    /// Who to build for: eye-tracking (the published dataset's patients), cxr (every
    /// MIMIC-CXR-JPG patient) or subjects:PATH (one subject_id per line).
    #[arg(long)]
    pub cohort: Option<crate::CohortKind>,
}

impl Settings {
    /// The config file merged with the flags, the datasets found in the input.
    pub fn resolve(self) -> anyhow::Result<Config> {
        let (config, overrides) = self.into_parts();
        let file = match &config {
            Some(path) => ConfigFile::load(path)?,
            None => ConfigFile::default(),
        };
        Config::resolve(file, overrides)
    }

    /// As `resolve`, for commands that only read the input: no output folder needed.
    pub fn resolve_input_only(mut self) -> anyhow::Result<Config> {
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
    pub fn into_parts(self) -> (Option<PathBuf>, Overrides) {
        let Settings { config, input, output, profile, window_days, cohort } = self;
        (config, Overrides { input, output, profile, window_days, metrics_addr: None, cohort })
    }
}

#[derive(Subcommand)]
pub enum Command {
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
        cohort: Option<crate::CohortKind>,
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
    /// Check a config before starting the service: the file, the paths and their permissions,
    /// the datasets found in the input. Exits 0 when `run` would start, else names the problem.
    Validate {
        #[command(flatten)]
        settings: Settings,
    },
    /// Print a shell completion script (bash: `mimic-eye completions bash >
    /// /etc/bash_completion.d/mimic-eye`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page, in roff (`mimic-eye man > mimic-eye.1; man ./mimic-eye.1`).
    Man,
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
pub struct SynthArgs {
    #[arg(long)]
    pub output: PathBuf,
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
    pub fn spec(self) -> synth::SynthSpec {
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
