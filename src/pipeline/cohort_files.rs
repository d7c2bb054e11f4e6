//! What a build of this input would copy for its cohort, computed by the build's own rule and
//! code (the linker and the folder jobs' folder list), for `mimic-eye fetch`: the folders of the
//! cohort's images, readings and transcripts, and its report files.

use std::path::PathBuf;

use crate::config::Config;
use crate::input;
use crate::pipeline::linker;
use crate::pipeline::read_set;
use crate::shutdown::CancelToken;
use crate::source::Sha256Check;

/// The cohort's copied folders (absolute, with whether their subfolders count too), report
/// files and size.
#[derive(Debug, Default)]
pub(crate) struct CohortFiles {
    pub folders: Vec<(PathBuf, bool)>,
    /// `files/pXX/pNNN/sNNN.txt` of MIMIC-CXR, one per study of the cohort (MIMIC-CXR's
    /// SHA256SUMS.txt does not list them).
    pub reports: Vec<PathBuf>,
    pub patients: usize,
    pub images: usize,
}

/// Links the cohort of `config`'s input (its linker tables must be there) and lists what the
/// folder jobs would copy.
pub(crate) fn cohort_files(config: &Config) -> anyhow::Result<CohortFiles> {
    let rule = crate::cohort::CohortRule::load(&config.cohort)?;
    let side = input::linker_table_paths(config)?;
    let cancel = CancelToken::default();
    let tables = linker::LinkTables {
        cxr_metadata: side.cxr_metadata.as_deref(),
        edstays: None,
        reflacx_phases: &side.reflacx_phases,
        master_sheet: side.master_sheet.as_deref(),
    };
    let off = |_: &std::path::Path| Sha256Check::Off;
    let settings = linker::LinkSettings {
        profile: config.profile,
        window_days: config.window_days,
        rule: &rule,
        sha256: &off,
        cancel: &cancel,
    };
    let (links, inputs) = linker::link(tables, settings)?;
    let mut files = CohortFiles { patients: links.cohort.len(), images: links.cxr_rows.len(), ..Default::default() };
    read_set::each_copied_folder(config, &links, &inputs.reflacx_metadata, &mut |path, recursive| {
        files.folders.push((path.to_path_buf(), recursive));
    });
    files.folders.sort();
    files.folders.dedup();
    let reports = config.datasets.mimic_cxr.join("files");
    files.reports = links
        .studies
        .iter()
        .map(|(subject, study)| reports.join(input::cxr_subject_dir(*subject)).join(format!("s{study}.txt")))
        .collect();
    Ok(files)
}
