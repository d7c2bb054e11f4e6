//! What the input holds, as the build will see it: the checks a build makes before it starts
//! (required and optional datasets) and, for `mimic-eye inputs`, every dataset's folder,
//! version, tables and checksum file. One source of truth for both, so `inputs` says exactly
//! why a build would refuse to start.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::Config;
use crate::input::{self, Module, SideInputs};
use crate::layout::DatasetKey;

/// Appended to the errors of a build that cannot start for want of an input.
pub const INPUTS_HINT: &str = "(run `mimic-eye inputs` to see what was found)";

/// One thing the build needs or can do without.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// The name used in the summary's `missing_datasets` for optional ones.
    pub name: &'static str,
    pub required: bool,
    pub present: bool,
    /// What is missing, and where it was looked for (the build's error when required).
    pub missing: String,
    pub path: PathBuf,
}

/// The build's checks, in the order it makes them: required first.
pub fn checks(config: &Config, side: &SideInputs) -> Vec<Check> {
    let d = &config.datasets;
    let hosp = Module::Hosp.dir(config);
    let icu = Module::Icu.dir(config);
    let check = |name, required, present, missing: String, path: &Path| Check {
        name,
        required,
        present,
        missing,
        path: path.to_path_buf(),
    };
    vec![
        check(
            "mimiciv",
            true,
            !Module::Hosp.tables(config).is_empty(),
            format!("required dataset MIMIC-IV is missing: no tables in {}", hosp.display()),
            &hosp,
        ),
        check(
            "mimic-cxr-jpg",
            true,
            side.cxr_metadata.is_some(),
            format!("required table mimic-cxr-2.0.0-metadata is missing from {}", d.mimic_cxr_jpg.display()),
            &d.mimic_cxr_jpg,
        ),
        check(
            "eye-tracking",
            true,
            side.master_sheet.is_some() || !side.reflacx_phases.is_empty(),
            format!(
                "no eye-tracking dataset: neither {} nor {} has metadata",
                d.egd_cxr.join("master_sheet.csv").display(),
                d.reflacx.join("main_data").display()
            ),
            &config.input,
        ),
        check("egd-cxr", false, side.master_sheet.is_some(), "no master_sheet.csv".into(), &d.egd_cxr),
        check(
            "reflacx",
            false,
            !side.reflacx_phases.is_empty(),
            "no main_data/metadata_phase_*.csv".into(),
            &d.reflacx,
        ),
        check("mimic-iv-ed", false, side.edstays.is_some(), "no ed/edstays table".into(), &d.mimic_iv_ed),
        check("mimiciv/icu", false, !Module::Icu.tables(config).is_empty(), "no icu tables".into(), &icu),
        check("mimic-cxr", false, d.mimic_cxr.is_dir(), "no folder".into(), &d.mimic_cxr),
    ]
}

/// A table file found in a dataset.
#[derive(Debug, Clone, Serialize)]
pub struct TableFile {
    /// Relative to the dataset folder, without extension (`hosp/admissions`).
    pub name: String,
    pub path: PathBuf,
    pub bytes: u64,
    /// `csv` or `csv.gz`.
    pub format: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatasetReport {
    /// The `[datasets]` / `[versions]` key.
    pub key: &'static str,
    pub title: &'static str,
    pub folder: PathBuf,
    pub found: bool,
    pub version: Option<String>,
    /// Whether the (version) folder has PhysioNet's checksum file; it is not verified here.
    pub sha256sums: bool,
    pub tables: Vec<TableFile>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Inventory {
    pub input: PathBuf,
    pub datasets: Vec<DatasetReport>,
    pub checks: Vec<Check>,
}

/// The folders of a dataset whose tables the build reads ("" is the dataset folder itself).
fn table_folders(key: DatasetKey) -> &'static [&'static str] {
    match key {
        DatasetKey::MimicIv => &["hosp", "core", "icu"],
        DatasetKey::MimicIvEd => &["ed"],
        DatasetKey::Reflacx => &["main_data"],
        DatasetKey::MimicCxrJpg | DatasetKey::MimicCxr | DatasetKey::EgdCxr => &[""],
    }
}

impl Inventory {
    pub fn gather(config: &Config) -> Self {
        let datasets = DatasetKey::ALL
            .into_iter()
            .map(|key| {
                let folder = config.datasets.get(key).to_path_buf();
                let tables = table_folders(key)
                    .iter()
                    .flat_map(|sub| {
                        input::tables_in(&folder.join(sub), &config.input).into_iter().map(move |(name, path)| {
                            let name = if sub.is_empty() { name } else { format!("{sub}/{name}") };
                            let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
                            let format = if crate::source::is_gzip_name(&path) { "csv.gz" } else { "csv" };
                            TableFile { name, path, bytes, format }
                        })
                    })
                    .collect();
                DatasetReport {
                    key: key.config_key(),
                    title: key.title(),
                    found: folder.is_dir(),
                    version: config.datasets.versions.get(key).map(str::to_string),
                    sha256sums: folder.join("SHA256SUMS.txt").is_file(),
                    folder,
                    tables,
                }
            })
            .collect();
        let checks = checks(config, &input::side_inputs(config));
        Self { input: config.input.clone(), datasets, checks }
    }

    /// Whether a build could start on this input.
    pub fn ok(&self) -> bool {
        self.input.is_dir() && self.checks.iter().all(|c| c.present || !c.required)
    }

    /// The report for people.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "input: {}", self.input.display());
        if !self.input.is_dir() {
            let _ = writeln!(s, "  the input directory does not exist");
        }
        for d in &self.datasets {
            let _ = writeln!(s, "\n{} [{}]", d.title, d.key);
            if !d.found {
                let _ = writeln!(s, "  not found (looked for {})", d.folder.display());
                continue;
            }
            let _ = writeln!(s, "  folder:  {}", d.folder.display());
            let _ = writeln!(s, "  version: {}", d.version.as_deref().unwrap_or("none (no version folder)"));
            let _ = writeln!(s, "  SHA256SUMS.txt: {}", if d.sha256sums { "present" } else { "absent" });
            let _ = writeln!(s, "  tables: {}", d.tables.len());
            for t in &d.tables {
                let _ = writeln!(s, "    {:<40} {:>14} bytes  .{}", t.name, t.bytes, t.format);
            }
        }
        let missing: Vec<&Check> = self.checks.iter().filter(|c| !c.present).collect();
        let _ = writeln!(s, "\nmissing: {}", if missing.is_empty() { "nothing" } else { "" });
        for c in &missing {
            let kind = if c.required { "required" } else { "optional" };
            let _ = writeln!(s, "  {kind}: {} ({}; {})", c.name, c.missing, c.path.display());
        }
        let verdict = if self.ok() { "a build can start" } else { "a build would refuse to start" };
        let _ = writeln!(s, "\n{verdict}");
        s
    }
}
