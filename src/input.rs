//! Finding the parent tables in the input layout of SPEC §2.

use std::path::{Path, PathBuf};

use crate::config::{BothForms, Config};

/// A clinical module: every table in its folder is processed, whatever its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Module {
    Hosp,
    Icu,
    Ed,
}

impl Module {
    pub(crate) const ALL: [Module; 3] = [Module::Hosp, Module::Icu, Module::Ed];

    /// The key prefix (`hosp/labevents`) and the source folder name.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Module::Hosp => "hosp",
            Module::Icu => "icu",
            Module::Ed => "ed",
        }
    }

    /// The output folder name, in patient folders and under `spreadsheets/`.
    pub(crate) fn folder(self) -> &'static str {
        match self {
            Module::Hosp => "Hosp",
            Module::Icu => "ICU",
            Module::Ed => "ED",
        }
    }

    /// The module's main source folder (named in messages).
    pub(crate) fn dir(self, config: &Config) -> PathBuf {
        match self {
            Module::Hosp => config.datasets.mimiciv.join("hosp"),
            Module::Icu => config.datasets.mimiciv.join("icu"),
            Module::Ed => config.datasets.mimic_iv_ed.join("ed"),
        }
    }

    /// Every source folder of the module: MIMIC-IV 1.0 keeps admissions, patients and transfers
    /// in `core/`, which 2.0 merged into `hosp/`, so for MIMIC-Eye `core/` is part of Hosp.
    pub(crate) fn dirs(self, config: &Config) -> Vec<PathBuf> {
        match self {
            Module::Hosp => vec![self.dir(config), config.datasets.mimiciv.join("core")],
            Module::Icu | Module::Ed => vec![self.dir(config)],
        }
    }

    /// The module's tables from all its folders, sorted by name; a name found in two folders
    /// (no published version has that) is taken from the first.
    pub(crate) fn tables(self, config: &Config) -> std::io::Result<Vec<(String, PathBuf)>> {
        let mut found: Vec<(String, PathBuf)> = Vec::new();
        for dir in self.dirs(config) {
            for (name, path) in tables_in(&dir, config)? {
                match found.iter().find(|(n, _)| *n == name) {
                    Some((_, kept)) => {
                        tracing::warn!(table = %name, kept = %kept.display(), ignored = %path.display(), "table in two module folders")
                    }
                    None => found.push((name, path)),
                }
            }
        }
        found.sort();
        Ok(found)
    }
}

/// MIMIC-IV (1.0–3.1) and MIMIC-IV-ED tables whose published schema has `subject_id`: they are
/// split per patient whatever their header says, so a damaged header fails the table instead of
/// publishing every patient's rows to `spreadsheets/`.
const PER_PATIENT_TABLES: [&str; 30] = [
    // hosp (and 1.0's core)
    "admissions",
    "diagnoses_icd",
    "drgcodes",
    "emar",
    "emar_detail",
    "hcpcsevents",
    "labevents",
    "microbiologyevents",
    "omr",
    "patients",
    "pharmacy",
    "poe",
    "poe_detail",
    "prescriptions",
    "procedures_icd",
    "services",
    "transfers",
    // icu
    "chartevents",
    "datetimeevents",
    "icustays",
    "ingredientevents",
    "inputevents",
    "outputevents",
    "procedureevents",
    // ed
    "edstays",
    "triage",
    "vitalsign",
    "diagnosis",
    "medrecon",
    "pyxis",
];

/// Whether a clinical table is known to hold one row per patient event (`subject_id`).
pub(crate) fn is_per_patient_table(name: &str) -> bool {
    PER_PATIENT_TABLES.contains(&name.to_ascii_lowercase().as_str())
}

/// The table name of a `.csv` or `.csv.gz` file (`labevents.csv.gz` → `labevents`).
pub(crate) fn table_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let lower = name.to_ascii_lowercase();
    let stem_len = if lower.ends_with(".csv.gz") {
        name.len() - 7
    } else if lower.ends_with(".csv") {
        name.len() - 4
    } else {
        return None;
    };
    let stem = &name[..stem_len];
    // The stem becomes a file name in the output: keep it to safe characters.
    let safe = !stem.is_empty()
        && !stem.starts_with('.')
        && stem.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    safe.then(|| stem.to_string())
}

/// A file in a table folder that is not read, and why (its path escaped: a name may hold a
/// newline or bytes that are not UTF-8).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    pub path: String,
    pub reason: &'static str,
}

/// What a table folder holds: its tables, the table-like files that are not read, and the
/// tables that are there but cannot be read as they are (they fail and keep their outputs:
/// never taken for tables removed from the input).
#[derive(Debug, Default)]
pub(crate) struct FolderScan {
    pub tables: Vec<(String, PathBuf)>,
    pub skipped: Vec<Skipped>,
    pub refused: Vec<Refused>,
}

/// A table that is there but is not read: why, naming the path(s).
#[derive(Debug, Clone)]
pub(crate) struct Refused {
    pub name: String,
    pub message: String,
}

/// Looks like a table by its ending, whatever the rest of the name.
fn has_table_ending(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let name = path.file_name().map_or(&[][..], |n| n.as_bytes()).to_ascii_lowercase();
    name.ends_with(b".csv") || name.ends_with(b".csv.gz")
}

/// The tables of a folder, one path per table name, sorted by name. A symbolic link is followed
/// when its target is a regular file inside the input tree.
pub(crate) fn tables_in(dir: &Path, config: &Config) -> std::io::Result<Vec<(String, PathBuf)>> {
    Ok(scan_folder(dir, &config.input, config.both_forms)?.tables)
}

/// [`tables_in`], with the files it passes over and the tables it refuses; `both` says which
/// file of a table found as `.csv` and `.csv.gz` is read. A folder that is not there holds no
/// table; one that cannot be listed is an error naming it (its tables are not "gone").
pub(crate) fn scan_folder(dir: &Path, root: &Path, both: BothForms) -> std::io::Result<FolderScan> {
    let mut scan = FolderScan::default();
    let named = |e: std::io::Error| std::io::Error::new(e.kind(), format!("listing {}: {e}", dir.display()));
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(scan),
        Err(e) => return Err(named(e)),
    };
    // Inside the input tree, or beside the table in its own (possibly linked-in) folder.
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let (root, here) = (canonical(root), canonical(dir));
    let inside = |target: &Path| target.starts_with(&root) || target.starts_with(&here);
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(named)?;
        let path = entry.path();
        let kind = entry.file_type().map_err(named)?;
        if !kind.is_file() && !has_table_ending(&path) {
            continue;
        }
        let Some(name) = table_name(&path) else {
            if has_table_ending(&path) {
                let reason = "name not usable as an output file name (letters, digits, _ - . only)";
                scan.skipped.push(Skipped { path: format!("{path:?}"), reason });
            }
            continue;
        };
        // Only a regular file is a table; anything else by a table's name is refused, so that
        // its outputs stay (a folder or FIFO named labevents.csv.gz is no removal).
        let refusal = if kind.is_symlink() {
            match std::fs::canonicalize(&path) {
                Ok(target) if !inside(&target) => Some("a symbolic link leaving the input tree"),
                Ok(target) if target.is_file() => None,
                Ok(_) => Some("a symbolic link to something that is not a regular file"),
                Err(_) => Some("a symbolic link to nothing"),
            }
        } else if kind.is_file() {
            None
        } else if kind.is_dir() {
            Some("a folder, not a regular file")
        } else {
            Some("not a regular file (a FIFO, socket or device)")
        };
        if let Some(reason) = refusal {
            scan.refused.push(Refused { message: format!("{}: {reason}", path.display()), name });
            continue;
        }
        found.push((name, path));
    }
    found.sort();
    pick_forms(&mut found, both, &mut scan.refused);
    scan.tables = found;
    scan.refused.sort_by(|a, b| a.name.cmp(&b.name));
    scan.skipped.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(scan)
}

/// One path per table name in `found` (sorted by name): a table there both as `.csv` and
/// `.csv.gz` is read as `both` says, or refused naming both files.
fn pick_forms(found: &mut Vec<(String, PathBuf)>, both: BothForms, refused: &mut Vec<Refused>) {
    let mut i = 0;
    while i < found.len() {
        let same = found[i..].iter().take_while(|(n, _)| *n == found[i].0).count();
        if same == 1 {
            i += 1;
            continue;
        }
        let group: Vec<(String, PathBuf)> = found.drain(i..i + same).collect();
        let pick = |gz: bool| group.iter().find(|(_, p)| crate::source::is_gzip_name(p) == gz).cloned();
        let chosen = match both {
            BothForms::Refuse => None,
            BothForms::Csv => pick(false),
            BothForms::Gz => pick(true),
        };
        match chosen {
            Some(table) => {
                found.insert(i, table);
                i += 1;
            }
            None => {
                let paths: Vec<String> = group.iter().map(|(_, p)| p.display().to_string()).collect();
                refused.push(Refused {
                    name: group[0].0.clone(),
                    message: format!(
                        "{}: the table is there in {} forms; an interrupted `gunzip -k` leaves both, one cut short (remove one, or set both_forms = \"csv\" or \"gz\" in the config)",
                        paths.join(" and "),
                        paths.len()
                    ),
                });
            }
        }
    }
}

/// A table of `tables` by base name.
fn pick(tables: &[(String, PathBuf)], base: &str) -> Option<PathBuf> {
    tables.iter().find(|(n, _)| n == base).map(|(_, p)| p.clone())
}

/// A table of the input that is there but is not read (see [`FolderScan::refused`]), with the
/// key of the job it would be; `decides_cohort` for the linker's tables.
#[derive(Debug, Clone)]
pub(crate) struct RefusedTable {
    pub key: String,
    pub decides_cohort: bool,
    pub message: String,
}

/// Every refused table the build would read, by job key.
pub(crate) fn refused_tables(config: &Config) -> std::io::Result<Vec<RefusedTable>> {
    let d = &config.datasets;
    let scan = |dir: &Path| scan_folder(dir, &config.input, config.both_forms).map(|s| s.refused);
    let mut out = Vec::new();
    for module in Module::ALL {
        for dir in module.dirs(config) {
            for r in scan(&dir)? {
                let decides_cohort = module == Module::Ed && r.name == "edstays";
                out.push(RefusedTable {
                    key: format!("{}/{}", module.key(), r.name),
                    decides_cohort,
                    message: r.message,
                });
            }
        }
    }
    for r in scan(&d.mimic_cxr_jpg)? {
        if let Some(t) = r.name.strip_prefix("mimic-cxr-2.0.0-") {
            if matches!(t, "chexpert" | "negbio" | "split" | "metadata") {
                out.push(RefusedTable {
                    key: format!("mimic-cxr-jpg/{t}"),
                    decides_cohort: t == "metadata",
                    message: r.message,
                });
            }
        }
    }
    for r in scan(&d.reflacx.join("main_data"))? {
        if r.name.starts_with("metadata_phase_") {
            out.push(RefusedTable { key: format!("reflacx/{}", r.name), decides_cohort: true, message: r.message });
        }
    }
    for r in scan(&d.egd_cxr)? {
        if matches!(r.name.as_str(), "eye_gaze" | "fixations" | "bounding_boxes" | "master_sheet") {
            let decides_cohort = r.name == "master_sheet";
            out.push(RefusedTable { key: format!("egd-cxr/{}", r.name), decides_cohort, message: r.message });
        }
    }
    Ok(out)
}

/// Every table folder the build reads: the modules' folders and the dataset roots holding
/// tables.
pub(crate) fn table_folders(config: &Config) -> Vec<PathBuf> {
    let d = &config.datasets;
    let mut dirs: Vec<PathBuf> = Module::ALL.iter().flat_map(|m| m.dirs(config)).collect();
    dirs.extend([d.mimic_cxr_jpg.clone(), d.reflacx.join("main_data"), d.egd_cxr.clone()]);
    dirs
}

/// The table-like files of every table folder that are not read, each named once in the log.
pub(crate) fn skipped_files(config: &Config) -> Vec<Skipped> {
    let skipped: Vec<Skipped> = table_folders(config)
        .iter()
        .flat_map(|dir| scan_folder(dir, &config.input, config.both_forms).map(|s| s.skipped).unwrap_or_default())
        .collect();
    for s in &skipped {
        tracing::warn!(path = %s.path, reason = s.reason, "input file not read");
    }
    skipped
}

/// The zip PhysioNet offers beside MIMIC-CXR's tree: every report, 135 MB.
pub(crate) const REPORTS_ZIP: &str = "mimic-cxr-reports.zip";

/// Where MIMIC-CXR's reports are: `mimic-cxr-reports.zip` (preferred when both are there), the
/// unzipped `files/` tree, or neither.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReportsForm {
    Tree(PathBuf),
    Zip(PathBuf),
    None,
}

impl ReportsForm {
    pub(crate) fn of(config: &Config) -> Self {
        let root = &config.datasets.mimic_cxr;
        let (files, zip) = (root.join("files"), root.join(REPORTS_ZIP));
        // The zip first: it holds every report, while a `files/` tree may hold only some (a
        // fetch that took an earlier, smaller cohort's reports one by one).
        if std::fs::metadata(&zip).is_ok_and(|m| m.is_file()) {
            Self::Zip(zip)
        } else if files.is_dir() {
            Self::Tree(files)
        } else {
            Self::None
        }
    }

    /// How `inputs` names it.
    pub(crate) fn describe(&self) -> &'static str {
        match self {
            Self::Tree(_) => "the files/ tree",
            Self::Zip(_) => REPORTS_ZIP,
            Self::None => "none found",
        }
    }
}

/// `p<first 2 digits>/p<subject_id>`: the MIMIC-CXR folder of a subject.
pub(crate) fn cxr_subject_dir(subject: crate::ids::SubjectId) -> PathBuf {
    let s = subject.to_string();
    PathBuf::from(format!("p{}", &s[..2.min(s.len())])).join(format!("p{s}"))
}

/// Where the linker's and the fixed datasets' files are.
#[derive(Debug, Clone, Default)]
pub(crate) struct LinkerTablePaths {
    pub cxr_metadata: Option<PathBuf>,
    pub cxr_tables: Vec<(String, PathBuf)>,
    pub edstays: Option<PathBuf>,
    pub reflacx_phases: Vec<PathBuf>,
    pub master_sheet: Option<PathBuf>,
    pub eye_gaze_tables: Vec<(String, PathBuf)>,
}

/// The linker's and the fixed datasets' tables, each folder listed once; a folder that cannot
/// be listed is an error (its tables would otherwise look absent and shrink the cohort).
pub(crate) fn linker_table_paths(config: &Config) -> std::io::Result<LinkerTablePaths> {
    let d = &config.datasets;
    let (cxr, reflacx, egd) = (
        tables_in(&d.mimic_cxr_jpg, config)?,
        tables_in(&d.reflacx.join("main_data"), config)?,
        tables_in(&d.egd_cxr, config)?,
    );
    let cxr_tables = ["chexpert", "negbio", "split"]
        .iter()
        .filter_map(|t| pick(&cxr, &format!("mimic-cxr-2.0.0-{t}")).map(|p| (t.to_string(), p)))
        .collect();
    let reflacx_phases = (1..=3).filter_map(|n| pick(&reflacx, &format!("metadata_phase_{n}"))).collect();
    let eye_gaze_tables = ["eye_gaze", "fixations", "bounding_boxes"]
        .iter()
        .filter_map(|t| pick(&egd, t).map(|p| (t.to_string(), p)))
        .collect();
    Ok(LinkerTablePaths {
        cxr_metadata: pick(&cxr, "mimic-cxr-2.0.0-metadata"),
        cxr_tables,
        edstays: pick(&Module::Ed.tables(config)?, "edstays"),
        reflacx_phases,
        master_sheet: pick(&egd, "master_sheet"),
        eye_gaze_tables,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        assert_eq!(table_name(Path::new("a/labevents.csv.gz")).as_deref(), Some("labevents"));
        assert_eq!(table_name(Path::new("a/provider.CSV")).as_deref(), Some("provider"));
        assert_eq!(table_name(Path::new("a/index.html")), None);
        assert_eq!(table_name(Path::new("a/.csv")), None);
        assert_eq!(table_name(Path::new("a/bad name.csv")), None);
        assert_eq!(table_name(Path::new("a/mimic-cxr-2.0.0-split.csv.gz")).as_deref(), Some("mimic-cxr-2.0.0-split"));
        assert_eq!(table_name(Path::new("a/..csv")), None);
    }
}
