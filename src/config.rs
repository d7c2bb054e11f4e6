//! The TOML config file and command-line flags, merged into one validated `Config`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::layout::{self, PerDataset, Versions};

/// Which rules a build follows (`profile` in the config; docs/SPEC.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// The method as the paper describes it, with the original build's defects fixed.
    #[default]
    Paper,
    /// Reproduces what the authors' released build (MIMIC-Eye 1.0.0) did.
    Release,
}

impl Profile {
    /// The name used in the config file and in summary.json.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Paper => "paper",
            Profile::Release => "release",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FilesMode {
    /// Hard link copied files, falling back to a copy where linking fails (across file
    /// systems; under `fs.protected_hardlinks` for files the user does not own).
    #[default]
    Hardlink,
    /// Byte copies, mode 0640.
    Copy,
    /// Copy-on-write clones (`ioctl(FICLONE)`: btrfs, XFS), falling back to a copy where the
    /// file system cannot clone.
    Reflink,
    /// Symbolic links into the input tree (absolute targets).
    Symlink,
}

/// Which file to read when a table is there both as `.csv` and as `.csv.gz` (an interrupted
/// `gunzip -k` leaves both, the `.csv` cut short).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub(crate) enum BothForms {
    /// Neither: the table fails, naming both files, and keeps its previous output.
    #[default]
    Refuse,
    /// The `.csv`.
    Csv,
    /// The `.csv.gz`.
    Gz,
}

/// Dataset roots as written in the file (relative paths are relative to `input`).
pub(crate) type DatasetsFile = PerDataset<Option<PathBuf>>;

/// The config file as written (every key optional; docs/SPEC.md §7).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The input folder: a PhysioNet mirror or the short layout.
    pub input: Option<PathBuf>,
    /// The output folder.
    pub output: Option<PathBuf>,
    /// `paper` or `release`.
    pub profile: Option<Profile>,
    /// Days an X-ray may fall outside an ED stay and still link to it.
    pub window_days: Option<u32>,
    pub(crate) index_column: Option<bool>,
    /// How copied folders' files are placed.
    pub files: Option<FilesMode>,
    /// Where `/metrics`, `/healthz` and `/status` are served: `HOST:PORT`, a name
    /// (`localhost:9898`) or an address.
    pub metrics_addr: Option<String>,
    pub(crate) allow_non_loopback_metrics: Option<bool>,
    pub(crate) parallel_tables: Option<usize>,
    pub(crate) settle_seconds: Option<u64>,
    pub(crate) rescan_seconds: Option<u64>,
    pub(crate) alert_max_age_hours: Option<u64>,
    /// A table both as `.csv` and `.csv.gz`: "refuse" (default), "csv" or "gz".
    pub(crate) both_forms: Option<BothForms>,
    /// Where `fetch` downloads from (default `https://physionet.org/files/`).
    pub(crate) physionet_url: Option<String>,
    /// "eye-tracking" (default), "cxr" or "subjects:PATH".
    pub cohort: Option<crate::cohort::CohortKind>,
    /// Per-dataset folders, overriding layout detection.
    #[serde(default)]
    pub(crate) datasets: DatasetsFile,
    /// The version folder to use per dataset when several sit side by side.
    #[serde(default)]
    pub(crate) versions: Versions,
}

/// Resolved dataset roots: the version folder when the dataset has one (see `layout`), and the
/// version of each found, for provenance. Derefs to the roots (`datasets.mimiciv`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Datasets {
    #[serde(flatten)]
    roots: PerDataset<PathBuf>,
    /// The version of each dataset found (its version folder's name), for provenance; `None`
    /// for a folder without version folders (the short layout) or a dataset not found.
    pub(crate) versions: Versions,
}

impl std::ops::Deref for Datasets {
    type Target = PerDataset<PathBuf>;
    fn deref(&self) -> &Self::Target {
        &self.roots
    }
}

impl std::ops::DerefMut for Datasets {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.roots
    }
}

impl Datasets {
    /// Finds every dataset in `input` (explicit paths win), in whichever layout it is. A dataset
    /// not found keeps its short-layout path, which does not exist: the build decides whether
    /// that is fatal.
    pub(crate) fn resolve(input: &Path, explicit: &DatasetsFile, pins: &Versions) -> Result<Self, layout::LayoutError> {
        let mut versions = Versions::default();
        let roots = PerDataset::try_from_fn(|key| -> Result<PathBuf, layout::LayoutError> {
            let given = explicit.get(key).as_deref();
            Ok(match layout::locate(input, key, given, pins.get(key).as_deref())? {
                Some(found) => {
                    *versions.get_mut(key) = found.version;
                    found.folder
                }
                None => match given {
                    Some(p) if p.is_absolute() => p.to_path_buf(),
                    Some(p) => input.join(p),
                    None => input.join(key.short_name()),
                },
            })
        })?;
        Ok(Self { roots, versions })
    }
}

/// The settings a build runs with: file, flags and defaults resolved.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// The input folder.
    pub input: PathBuf,
    /// The output folder.
    pub output: PathBuf,
    /// Which rules the build follows.
    pub profile: Profile,
    /// Days an X-ray may fall outside an ED stay and still link to it.
    pub window_days: u32,
    pub(crate) index_column: bool,
    /// How copied folders' files are placed.
    pub files: FilesMode,
    /// Where the daemon serves its metrics.
    pub metrics_addr: SocketAddr,
    pub(crate) parallel_tables: usize,
    pub(crate) settle_seconds: u64,
    pub(crate) rescan_seconds: u64,
    pub(crate) alert_max_age_hours: u64,
    /// Which file of a table found both as `.csv` and `.csv.gz` is read.
    pub(crate) both_forms: BothForms,
    /// Who the dataset is built for.
    pub cohort: crate::cohort::CohortKind,
    /// Each parent dataset's folder.
    pub(crate) datasets: Datasets,
}

/// Every setting's default, in one place (`config/mimic-eye.toml` states the same values: a
/// test holds it to them).
pub(crate) mod defaults {
    /// Loopback: the metrics listener is never exposed by default.
    pub(crate) const METRICS_ADDR: &str = "127.0.0.1:9898";
    pub(crate) const WINDOW_DAYS: u32 = 0;
    pub(crate) const INDEX_COLUMN: bool = true;
    pub(crate) const PARALLEL_TABLES: usize = 2;
    pub(crate) const SETTLE_SECONDS: u64 = 5;
    pub(crate) const RESCAN_SECONDS: u64 = 300;
    pub(crate) const ALERT_MAX_AGE_HOURS: u64 = 24;
}

pub(crate) const DEFAULT_METRICS_ADDR: &str = defaults::METRICS_ADDR;

/// Flags that override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--input`.
    pub input: Option<PathBuf>,
    /// `--output`.
    pub output: Option<PathBuf>,
    /// `--profile`.
    pub profile: Option<Profile>,
    /// `--window-days`.
    pub window_days: Option<u32>,
    /// `--metrics-addr`.
    pub metrics_addr: Option<SocketAddr>,
    /// `--cohort`.
    pub cohort: Option<crate::cohort::CohortKind>,
}

impl ConfigFile {
    /// Reads and parses a TOML config file (unknown keys are an error).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        use std::io::Read;
        // A regular file of a bounded size: a FIFO or a device named as the config must not hang
        // or fill memory.
        const MAX_CONFIG_BYTES: u64 = 1 << 20;
        let reading = || format!("reading config {}", path.display());
        let file = crate::sys::open_regular(path).with_context(reading)?;
        let mut text = String::new();
        file.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text).with_context(reading)?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            bail!("config {} is larger than {MAX_CONFIG_BYTES} bytes: not a config file", path.display());
        }
        toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))
    }
}

impl Config {
    /// Resolves the file and the flags (flags win) into checked settings.
    pub fn resolve(file: ConfigFile, flags: Overrides) -> anyhow::Result<Self> {
        let Some(input) = flags.input.or(file.input) else {
            bail!("no input directory: set `input` in the config or pass --input")
        };
        let Some(output) = flags.output.or(file.output) else {
            bail!("no output directory: set `output` in the config or pass --output")
        };
        let metrics_addr = match (flags.metrics_addr, &file.metrics_addr) {
            (Some(a), _) => a,
            (None, Some(text)) => listen_addr(text)?,
            (None, None) => DEFAULT_METRICS_ADDR.parse()?,
        };
        if !metrics_addr.ip().is_loopback() && !file.allow_non_loopback_metrics.unwrap_or(false) {
            bail!("metrics_addr {metrics_addr} is not a loopback address; set allow_non_loopback_metrics = true to expose it");
        }
        let datasets = Datasets::resolve(&input, &file.datasets, &file.versions)?;
        check_no_overlap(&input, &output, &datasets)?;
        let config = Self {
            input,
            output,
            profile: flags.profile.or(file.profile).unwrap_or_default(),
            window_days: flags.window_days.or(file.window_days).unwrap_or(defaults::WINDOW_DAYS),
            index_column: file.index_column.unwrap_or(defaults::INDEX_COLUMN),
            files: file.files.unwrap_or_default(),
            metrics_addr,
            parallel_tables: file.parallel_tables.unwrap_or(defaults::PARALLEL_TABLES),
            settle_seconds: file.settle_seconds.unwrap_or(defaults::SETTLE_SECONDS),
            rescan_seconds: file.rescan_seconds.unwrap_or(defaults::RESCAN_SECONDS),
            alert_max_age_hours: file.alert_max_age_hours.unwrap_or(defaults::ALERT_MAX_AGE_HOURS),
            both_forms: file.both_forms.unwrap_or_default(),
            cohort: flags.cohort.or(file.cohort).unwrap_or_default(),
            datasets,
        };
        config.check_ranges()?;
        Ok(config)
    }

    /// Every number within a range that the program can work with (a window of 10^8 days
    /// overflowed the date arithmetic).
    fn check_ranges(&self) -> anyhow::Result<()> {
        let checks: [(&str, u64, u64, u64); 5] = [
            ("window_days", u64::from(self.window_days), 0, 3_650),
            ("parallel_tables", self.parallel_tables as u64, 1, 16),
            ("settle_seconds", self.settle_seconds, 0, 86_400),
            ("rescan_seconds", self.rescan_seconds, 1, 86_400),
            ("alert_max_age_hours", self.alert_max_age_hours, 1, 8_760),
        ];
        for (name, value, lo, hi) in checks {
            if !(lo..=hi).contains(&value) {
                bail!("{name} = {value} is out of range: it must be from {lo} to {hi}");
            }
        }
        Ok(())
    }
}

/// `HOST:PORT` as an address to listen on: the first address a name resolves to (loopback
/// first, so `localhost:9898` is 127.0.0.1 or ::1 whatever the resolver's order).
fn listen_addr(text: &str) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    let all: Vec<SocketAddr> = text
        .to_socket_addrs()
        .with_context(|| format!("metrics_addr = {text:?}: not HOST:PORT, or the host does not resolve"))?
        .collect();
    let loopback = all.iter().find(|a| a.ip().is_loopback());
    loopback.or(all.first()).copied().with_context(|| format!("metrics_addr = {text:?} resolves to no address"))
}

/// A path made absolute, with symbolic links resolved as far as it exists (the output may not
/// exist yet).
fn real_path(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    while let Some(parent) = existing.parent() {
        if let Ok(real) = std::fs::canonicalize(existing) {
            return rest.iter().rev().fold(real, |p, part| p.join(part));
        }
        rest.extend(existing.file_name());
        existing = parent;
    }
    absolute
}

/// Refuses an output that overlaps what the build reads: the same folder, an output holding
/// the input, or an output inside a dataset root (it would copy itself into itself).
fn check_no_overlap(input: &Path, output: &Path, datasets: &Datasets) -> anyhow::Result<()> {
    let (input_real, output_real) = (real_path(input), real_path(output));
    if output_real == input_real {
        bail!("the output directory {} is the input directory: choose another", output.display());
    }
    if input_real.starts_with(&output_real) {
        bail!("the input directory {} is inside the output directory {}", input.display(), output.display());
    }
    for root in datasets.all() {
        if output_real.starts_with(real_path(root)) {
            bail!("the output directory {} is inside the dataset folder {}", output.display(), root.display());
        }
    }
    if output_real.starts_with(&input_real) {
        // Allowed (it is not a dataset folder), but said so it is not a surprise.
        tracing::warn!("the output directory is inside the input directory");
    }
    Ok(())
}

impl Datasets {
    pub(crate) fn all(&self) -> [&PathBuf; 6] {
        [&self.mimiciv, &self.mimic_iv_ed, &self.mimic_cxr_jpg, &self.mimic_cxr, &self.reflacx, &self.egd_cxr]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_states_the_defaults() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/mimic-eye.toml")).unwrap();
        let file: ConfigFile = toml::from_str(&text).unwrap();
        assert_eq!(file.profile, Some(Profile::default()));
        assert_eq!(file.window_days, Some(defaults::WINDOW_DAYS));
        assert_eq!(file.index_column, Some(defaults::INDEX_COLUMN));
        // The one exception: the file is the service's config, and the shipped unit reads the
        // input and writes the output through two mounts, where no hard link can be made.
        let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/mimic-eye.service")).unwrap();
        assert!(unit.contains("\nReadOnlyPaths=/srv/physionet") && unit.contains("\nReadWritePaths=/srv/mimic-eye"));
        assert_eq!(FilesMode::default(), FilesMode::Hardlink);
        assert_eq!(file.files, Some(FilesMode::Reflink));
        assert_eq!(file.metrics_addr.as_deref(), Some(defaults::METRICS_ADDR));
        assert_eq!(file.allow_non_loopback_metrics, Some(false));
        assert_eq!(file.parallel_tables, Some(defaults::PARALLEL_TABLES));
        assert_eq!(file.settle_seconds, Some(defaults::SETTLE_SECONDS));
        assert_eq!(file.rescan_seconds, Some(defaults::RESCAN_SECONDS));
        assert_eq!(file.alert_max_age_hours, Some(defaults::ALERT_MAX_AGE_HOURS));
        assert_eq!(file.cohort, Some(crate::cohort::CohortKind::default()));
        // And a config that sets nothing resolves to them.
        let bare: ConfigFile = toml::from_str("input = '/i'\noutput = '/o'").unwrap();
        let c = Config::resolve(bare, Overrides::default()).unwrap();
        assert_eq!(
            (c.window_days, c.index_column, c.parallel_tables, c.settle_seconds, c.rescan_seconds),
            (
                defaults::WINDOW_DAYS,
                defaults::INDEX_COLUMN,
                defaults::PARALLEL_TABLES,
                defaults::SETTLE_SECONDS,
                defaults::RESCAN_SECONDS
            )
        );
    }

    #[test]
    fn example_config_parses_and_flags_override() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/mimic-eye.toml")).unwrap();
        let file: ConfigFile = toml::from_str(&text).unwrap();
        let flags = Overrides { profile: Some(Profile::Release), ..Default::default() };
        let c = Config::resolve(file, flags).unwrap();
        assert_eq!(c.profile, Profile::Release);
        assert!(c.metrics_addr.ip().is_loopback());
        assert!(c.datasets.reflacx.starts_with(&c.input));
    }

    #[test]
    fn versions_table_is_checked_and_explicit_paths_win() {
        let bad: Result<ConfigFile, _> = toml::from_str("[versions]\nmimic_iv = \"2.2\"");
        assert!(bad.is_err(), "an unknown [versions] key was accepted");
        let t = tempfile::tempdir().unwrap();
        let files = t.path().join("physionet.org/files");
        for dir in ["mimiciv/2.2/hosp", "elsewhere/2.0/hosp", "reflacx-xray-localization/1.0.0"] {
            std::fs::create_dir_all(files.join(dir)).unwrap();
        }
        let text =
            format!("input = {:?}\noutput = '/o'\n[datasets]\nmimiciv = 'physionet.org/files/elsewhere'", t.path());
        let c = Config::resolve(toml::from_str(&text).unwrap(), Overrides::default()).unwrap();
        assert_eq!(c.datasets.mimiciv, files.join("elsewhere/2.0"));
        assert_eq!(c.datasets.versions.mimiciv.as_deref(), Some("2.0"));
        assert_eq!(c.datasets.reflacx, files.join("reflacx-xray-localization/1.0.0"));
        assert_eq!(c.datasets.versions.reflacx.as_deref(), Some("1.0.0"));
        // Absent datasets keep their short-layout path and no version.
        assert_eq!(c.datasets.egd_cxr, t.path().join("egd-cxr"));
        assert_eq!(c.datasets.versions.egd_cxr, None);
    }

    #[test]
    fn non_loopback_metrics_are_refused() {
        let file: ConfigFile = toml::from_str("input='/i'\noutput='/o'\nmetrics_addr='0.0.0.0:9898'").unwrap();
        assert!(Config::resolve(file, Overrides::default()).is_err());
    }

    #[test]
    fn metrics_addr_takes_a_host_name_and_says_what_it_cannot_use() {
        let file: ConfigFile = toml::from_str("input='/i'\noutput='/o'\nmetrics_addr='localhost:9898'").unwrap();
        let c = Config::resolve(file, Overrides::default()).unwrap();
        assert!(c.metrics_addr.ip().is_loopback() && c.metrics_addr.port() == 9898, "{}", c.metrics_addr);
        let file: ConfigFile = toml::from_str("input='/i'\noutput='/o'\nmetrics_addr='9898'").unwrap();
        let e = format!("{:#}", Config::resolve(file, Overrides::default()).unwrap_err());
        assert!(e.contains("metrics_addr = \"9898\": not HOST:PORT"), "{e}");
    }
}
