//! What the input holds, as the build will see it: the checks a build makes before it starts
//! (required and optional datasets) and, for `mimic-eye inputs`, every dataset's folder,
//! version, tables and checksum file. One source of truth for both, so `inputs` says exactly
//! why a build would refuse to start.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::Config;
use crate::input::{self, LinkerTablePaths, Module};
use crate::layout::DatasetKey;

/// Appended to the errors of a build that cannot start for want of an input.
pub(crate) const INPUTS_HINT: &str = "(run `mimic-eye inputs` to see what was found)";

/// One thing the build needs or can do without.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Check {
    /// The name used in the summary's `missing_datasets` for optional ones.
    pub name: &'static str,
    pub required: bool,
    pub present: bool,
    /// What is missing, and where it was looked for (the build's error when required).
    pub missing: String,
    pub path: PathBuf,
}

/// The build's checks, in the order it makes them: required first.
pub(crate) fn checks(config: &Config, side: &LinkerTablePaths) -> Vec<Check> {
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
            !Module::Hosp.tables(config).unwrap_or_default().is_empty(),
            format!(
                "required dataset MIMIC-IV is missing: no tables in {}{}",
                hosp.display(),
                crate::layout::input_hint(&config.input).map(|h| format!(" ({h})")).unwrap_or_default()
            ),
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
        check(
            "mimiciv/icu",
            false,
            !Module::Icu.tables(config).unwrap_or_default().is_empty(),
            "no icu tables".into(),
            &icu,
        ),
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
    /// Whether the (version) folder has PhysioNet's checksum file.
    pub sha256sums: bool,
    /// Why the checksum file could not be read or parsed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256sums_error: Option<String>,
    pub tables: Vec<TableFile>,
    /// Files the checksum file lists that are not there (an incomplete download).
    pub listed_missing: Listing,
    /// In a tree `fetch` filled: listed files it left out on purpose (outside the cohort).
    pub not_fetched: Listing,
    /// MIMIC-CXR: where its reports are read from (the `files/` tree or the zip).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reports: Option<&'static str>,
    /// Table files the checksum file does not list (not checked by a build).
    pub unlisted_tables: Vec<String>,
    /// With `--verify`: every listed file hashed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified: Option<Verified>,
}

pub(crate) use crate::sumscheck::Listing;

/// `inputs --verify`: the download checked against its SHA256SUMS.txt.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verified {
    /// Listed files present whose SHA-256 matched.
    pub ok: usize,
    pub mismatched: Listing,
    pub missing: Listing,
    /// Files present that the checksum file does not list (wget's index.html pages ignored).
    pub unlisted: Listing,
    /// Listed paths that lie outside the dataset folder (absolute, `..`): never opened.
    pub outside: Listing,
    /// In a tree `fetch` filled: listed files it left out on purpose (outside the cohort).
    pub not_fetched: Listing,
    /// Lines of the checksum file that are not `<sha256> <path>`, by number.
    pub malformed: Listing,
    /// Why the check could not run (the checksum file unreadable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What `mimic-eye inputs` reports: each parent dataset as found under the input.
#[derive(Debug, Clone, Serialize)]
pub struct Inventory {
    /// The input folder.
    pub input: PathBuf,
    /// One report per dataset.
    pub datasets: Vec<DatasetReport>,
    pub(crate) checks: Vec<Check>,
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

/// A dataset's listing read a line at a time: its files that are not there (missing, or left
/// out by a `fetch` on purpose) and the paths of the tables it lists.
#[derive(Default)]
struct ListingCheck {
    present: bool,
    error: Option<String>,
    missing: Listing,
    not_fetched: Listing,
    tables: std::collections::HashSet<PathBuf>,
}

impl ListingCheck {
    fn of(folder: &Path, input: &Path, plan: Option<&std::collections::HashSet<u64>>) -> Self {
        use std::os::unix::ffi::OsStrExt;
        let mut check = Self::default();
        let prefix = folder.strip_prefix(input).unwrap_or(folder);
        let (present, error) = crate::sums::each_listed(folder, &mut |rel, _| {
            let rel = Path::new(std::ffi::OsStr::from_bytes(rel));
            let path = folder.join(rel);
            // Tables lie at most two folders deep (`hosp/labevents.csv.gz`).
            if rel.components().count() <= 2 {
                check.tables.insert(path.clone());
            }
            if std::fs::symlink_metadata(&path).is_err() {
                let shown = || rel.to_string_lossy().into_owned();
                match plan {
                    Some(p) if !p.contains(&crate::fetched::key(&prefix.join(rel))) => check.not_fetched.push(shown),
                    _ => check.missing.push(shown),
                }
            }
        });
        (check.present, check.error) = (present, error);
        check
    }
}

impl Inventory {
    /// Finds every dataset under the configured input (no hashing; see `verify`).
    pub fn gather(config: &Config) -> Self {
        let plan = crate::fetched::planned(&config.input);
        let datasets = DatasetKey::ALL
            .into_iter()
            .map(|key| {
                let folder = config.datasets.get(key).to_path_buf();
                let tables: Vec<TableFile> = table_folders(key)
                    .iter()
                    .flat_map(|sub| {
                        input::tables_in(&folder.join(sub), config).unwrap_or_default().into_iter().map(
                            move |(name, path)| {
                                let name = if sub.is_empty() { name } else { format!("{sub}/{name}") };
                                let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
                                let format = if crate::source::is_gzip_name(&path) { "csv.gz" } else { "csv" };
                                TableFile { name, path, bytes, format }
                            },
                        )
                    })
                    .collect();
                let listing = ListingCheck::of(&folder, &config.input, plan.as_ref());
                let rel = |p: &Path| p.strip_prefix(&folder).unwrap_or(p).to_string_lossy().into_owned();
                let unlisted_tables = match listing.present {
                    true => tables.iter().filter(|t| !listing.tables.contains(&t.path)).map(|t| rel(&t.path)).collect(),
                    false => Vec::new(),
                };
                let (listed_missing, not_fetched) = (listing.missing, listing.not_fetched);
                DatasetReport {
                    key: key.config_key(),
                    title: key.title(),
                    found: folder.is_dir(),
                    version: config.datasets.versions.get(key).clone(),
                    sha256sums: listing.present,
                    sha256sums_error: listing.error,
                    folder,
                    tables,
                    listed_missing,
                    not_fetched,
                    reports: (key == DatasetKey::MimicCxr).then(|| input::ReportsForm::of(config).describe()),
                    unlisted_tables,
                    verified: None,
                }
            })
            .collect();
        let checks = checks(config, &input::linker_table_paths(config).unwrap_or_default());
        Self { input: config.input.clone(), datasets, checks }
    }

    /// `--verify`: hashes every file each dataset's checksum file lists (the whole download).
    pub fn verify(&mut self) {
        // A tree `fetch` filled holds what its cohort needs: the rest is not fetched, not missing.
        let plan = crate::fetched::planned(&self.input);
        for d in self.datasets.iter_mut().filter(|d| d.found && d.sha256sums) {
            let list = d.folder.join(crate::sums::SUMS_FILE);
            let prefix = d.folder.strip_prefix(&self.input).unwrap_or(&d.folder).to_path_buf();
            let was_planned = |rel: &[u8]| {
                use std::os::unix::ffi::OsStrExt;
                let rel = prefix.join(std::ffi::OsStr::from_bytes(rel));
                plan.as_ref().is_some_and(|p| p.contains(&crate::fetched::key(&rel)))
            };
            let planned: crate::sumscheck::Planned<'_> =
                plan.as_ref().map(|_| &was_planned as &(dyn Fn(&[u8]) -> bool + Sync));
            d.verified =
                Some(match crate::sumscheck::verify_tree(&d.folder, &list, crate::walk::Tree::Download, planned) {
                    Ok(v) => Verified {
                        ok: v.ok,
                        not_fetched: v.not_fetched,
                        mismatched: v.changed,
                        missing: v.missing,
                        unlisted: v.extra,
                        outside: v.outside,
                        malformed: v.malformed,
                        error: None,
                    },
                    Err(e) => Verified { error: Some(format!("{e:#}")), ..Default::default() },
                });
        }
    }

    /// After `--verify`: what makes the download fail its check (a mismatch or a missing file).
    pub fn verify_problem(&self) -> Option<String> {
        let (mut bad, mut missing, mut unverifiable) = (0, 0, 0);
        for v in self.datasets.iter().filter_map(|d| d.verified.as_ref()) {
            bad += v.mismatched.count;
            missing += v.missing.count;
            unverifiable += v.outside.count + v.malformed.count + usize::from(v.error.is_some());
        }
        (bad + missing + unverifiable > 0).then(|| {
            format!("the download does not match its SHA256SUMS.txt: {bad} file(s) differ, {missing} listed file(s) missing, {unverifiable} line(s) or listing(s) unverifiable")
        })
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
        } else if let Some(hint) = crate::layout::input_hint(&self.input) {
            let _ = writeln!(s, "  {hint}");
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
            if let Some(e) = &d.sha256sums_error {
                let _ = writeln!(s, "    unusable: {e}");
            }
            let _ = writeln!(s, "  tables: {}", d.tables.len());
            for t in &d.tables {
                let _ = writeln!(s, "    {:<40} {:>14} bytes  .{}", t.name, t.bytes, t.format);
            }
            if let Some(reports) = d.reports {
                let _ = writeln!(s, "  reports: {reports}");
            }
            d.listed_missing.text(&mut s, "listed in SHA256SUMS.txt but missing");
            d.not_fetched.text(&mut s, "not fetched (outside the cohort)");
            if !d.unlisted_tables.is_empty() {
                let _ = writeln!(s, "  tables not in SHA256SUMS.txt (not checked): {}", d.unlisted_tables.len());
                for t in &d.unlisted_tables {
                    let _ = writeln!(s, "    {t}");
                }
            }
            if let Some(v) = &d.verified {
                let _ = writeln!(s, "  verified against SHA256SUMS.txt: {} file(s) match", v.ok);
                v.mismatched.text(&mut s, "SHA-256 differs (incomplete or damaged)");
                v.missing.text(&mut s, "listed but missing");
                v.not_fetched.text(&mut s, "not fetched (outside the cohort)");
                v.unlisted.text(&mut s, "present but not listed");
                v.outside.text(&mut s, "listed outside the dataset folder (not opened)");
                v.malformed.text(&mut s, "malformed lines (unverifiable)");
                if let Some(e) = &v.error {
                    let _ = writeln!(s, "  could not be checked: {e}");
                }
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
