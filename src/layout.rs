//! Finding each parent dataset's folder in the input, whatever the layout the user has.
//!
//! Users' real trees are wget mirrors, `<root>/physionet.org/files/<slug>/<version>/…`, with
//! several versions of a dataset side by side; older setups (and the tests) use the short layout
//! `<input>/mimiciv/hosp`, `<input>/reflacx/main_data`, …. `--input` may be `<root>`,
//! `<root>/physionet.org/files` or a short-layout folder: this module turns it into one folder
//! per dataset, descending into its version folder, once, when the config is resolved. A second
//! version beside the first is never chosen silently (an upgrade changes the cohort and the
//! rows): the user pins one in `[versions]`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One of the six parent datasets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum DatasetKey {
    MimicIv,
    MimicIvEd,
    MimicCxrJpg,
    MimicCxr,
    Reflacx,
    EgdCxr,
}

impl DatasetKey {
    pub(crate) const ALL: [DatasetKey; 6] = [
        DatasetKey::MimicIv,
        DatasetKey::MimicIvEd,
        DatasetKey::MimicCxrJpg,
        DatasetKey::MimicCxr,
        DatasetKey::Reflacx,
        DatasetKey::EgdCxr,
    ];

    /// The key in the config's `[datasets]` and `[versions]` tables.
    pub(crate) fn config_key(self) -> &'static str {
        match self {
            DatasetKey::MimicIv => "mimiciv",
            DatasetKey::MimicIvEd => "mimic_iv_ed",
            DatasetKey::MimicCxrJpg => "mimic_cxr_jpg",
            DatasetKey::MimicCxr => "mimic_cxr",
            DatasetKey::Reflacx => "reflacx",
            DatasetKey::EgdCxr => "egd_cxr",
        }
    }

    /// The project's slug on PhysioNet: the folder name in a wget mirror.
    pub(crate) fn slug(self) -> &'static str {
        match self {
            DatasetKey::MimicIv => "mimiciv",
            DatasetKey::MimicIvEd => "mimic-iv-ed",
            DatasetKey::MimicCxrJpg => "mimic-cxr-jpg",
            DatasetKey::MimicCxr => "mimic-cxr",
            DatasetKey::Reflacx => "reflacx-xray-localization",
            DatasetKey::EgdCxr => "egd-cxr",
        }
    }

    /// The folder name of the short layout (SPEC §2), also the default `[datasets]` path.
    pub(crate) fn short_name(self) -> &'static str {
        match self {
            DatasetKey::Reflacx => "reflacx",
            other => other.slug(),
        }
    }

    /// The name people use for it, in messages.
    pub(crate) fn title(self) -> &'static str {
        match self {
            DatasetKey::MimicIv => "MIMIC-IV",
            DatasetKey::MimicIvEd => "MIMIC-IV-ED",
            DatasetKey::MimicCxrJpg => "MIMIC-CXR-JPG",
            DatasetKey::MimicCxr => "MIMIC-CXR",
            DatasetKey::Reflacx => "REFLACX",
            DatasetKey::EgdCxr => "EyeGaze (EGD-CXR)",
        }
    }
}

/// When `--input` names one dataset's folder (or its version folder) instead of the folder
/// holding them all: what to say, naming the folder to give instead. A user who types
/// `--input ~/physionet.org/files/mimiciv` must not be told that `mimiciv/mimiciv/hosp` is
/// missing.
pub(crate) fn input_hint(input: &Path) -> Option<String> {
    let name = |p: &Path| p.file_name().and_then(|n| n.to_str()).map(str::to_string);
    let is_dataset = |p: &Path| {
        let n = name(p)?;
        DatasetKey::ALL.into_iter().find(|k| k.slug() == n || k.short_name() == n)
    };
    let (key, holder) = match (is_dataset(input), input.parent()) {
        (Some(key), Some(parent)) => (key, parent),
        // A version folder: `<slug>/2.2`.
        _ => {
            let dataset = input.parent()?;
            let looks_versioned = name(input)?.starts_with(|c: char| c.is_ascii_digit());
            match is_dataset(dataset) {
                Some(key) if looks_versioned => (key, dataset.parent()?),
                _ if input.join("hosp").is_dir() => (DatasetKey::MimicIv, input.parent()?),
                _ => return None,
            }
        }
    };
    let holder = if holder.as_os_str().is_empty() { Path::new(".") } else { holder };
    Some(format!(
        "{} looks like the {} folder itself: --input takes the folder holding the datasets (here {})",
        input.display(),
        key.title(),
        holder.display()
    ))
}

/// A value per parent dataset, named as in the config file's `[datasets]` and `[versions]`
/// tables: the file's paths and pins, the resolved folders, the versions found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct PerDataset<T> {
    pub mimiciv: T,
    pub mimic_iv_ed: T,
    pub mimic_cxr_jpg: T,
    pub mimic_cxr: T,
    pub reflacx: T,
    pub egd_cxr: T,
}

impl<T> PerDataset<T> {
    /// Each dataset's value, made by `f`.
    pub(crate) fn from_fn(mut f: impl FnMut(DatasetKey) -> T) -> Self {
        Self {
            mimiciv: f(DatasetKey::MimicIv),
            mimic_iv_ed: f(DatasetKey::MimicIvEd),
            mimic_cxr_jpg: f(DatasetKey::MimicCxrJpg),
            mimic_cxr: f(DatasetKey::MimicCxr),
            reflacx: f(DatasetKey::Reflacx),
            egd_cxr: f(DatasetKey::EgdCxr),
        }
    }

    /// Like [`PerDataset::from_fn`], for a fallible `f` (the first error is returned).
    pub(crate) fn try_from_fn<E>(mut f: impl FnMut(DatasetKey) -> Result<T, E>) -> Result<Self, E> {
        Ok(Self {
            mimiciv: f(DatasetKey::MimicIv)?,
            mimic_iv_ed: f(DatasetKey::MimicIvEd)?,
            mimic_cxr_jpg: f(DatasetKey::MimicCxrJpg)?,
            mimic_cxr: f(DatasetKey::MimicCxr)?,
            reflacx: f(DatasetKey::Reflacx)?,
            egd_cxr: f(DatasetKey::EgdCxr)?,
        })
    }

    pub(crate) fn get_mut(&mut self, key: DatasetKey) -> &mut T {
        match key {
            DatasetKey::MimicIv => &mut self.mimiciv,
            DatasetKey::MimicIvEd => &mut self.mimic_iv_ed,
            DatasetKey::MimicCxrJpg => &mut self.mimic_cxr_jpg,
            DatasetKey::MimicCxr => &mut self.mimic_cxr,
            DatasetKey::Reflacx => &mut self.reflacx,
            DatasetKey::EgdCxr => &mut self.egd_cxr,
        }
    }

    pub(crate) fn get(&self, key: DatasetKey) -> &T {
        match key {
            DatasetKey::MimicIv => &self.mimiciv,
            DatasetKey::MimicIvEd => &self.mimic_iv_ed,
            DatasetKey::MimicCxrJpg => &self.mimic_cxr_jpg,
            DatasetKey::MimicCxr => &self.mimic_cxr,
            DatasetKey::Reflacx => &self.reflacx,
            DatasetKey::EgdCxr => &self.egd_cxr,
        }
    }
}

/// A version per dataset: the file's pins, or the version folders a build found (`None`: no
/// version folders, as in the short layout, or not found).
pub(crate) type Versions = PerDataset<Option<String>>;

/// Why the input's layout cannot be used as it is.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LayoutError {
    #[error(
        "{title} has several versions in {folder}: {list}; pin one in the config: [versions] {key} = \"{example}\"",
        title = .dataset.title(), folder = .folder.display(), list = .versions.join(", "),
        key = .dataset.config_key(), example = .versions.last().map_or("", String::as_str)
    )]
    SeveralVersions { dataset: DatasetKey, folder: PathBuf, versions: Vec<String> },
    #[error(
        "[versions] {key} = \"{pinned}\" but {folder} has no folder {pinned} (found: {list})",
        key = .dataset.config_key(), folder = .folder.display(),
        list = if .versions.is_empty() { "no version folders".to_string() } else { .versions.join(", ") }
    )]
    PinnedVersionMissing { dataset: DatasetKey, folder: PathBuf, pinned: String, versions: Vec<String> },
    #[error("listing {}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

/// A dataset's folder as resolved: the version folder when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Located {
    pub folder: PathBuf,
    pub version: Option<String>,
}

/// `2.2`, `1.0.0`, `3.1`: digits separated by single dots.
pub(crate) fn is_version_name(name: &str) -> bool {
    !name.is_empty() && name.split('.').all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
}

/// The version folders directly inside `dir`, in version order (`2.2` before `10.0`). wget's
/// `index.html` and anything else that is not a version-named folder is ignored.
pub(crate) fn version_folders(dir: &Path) -> Result<Vec<String>, LayoutError> {
    let entries = std::fs::read_dir(dir).map_err(|source| LayoutError::Io { path: dir.to_path_buf(), source })?;
    let mut versions: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()) || e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| is_version_name(n))
        .collect();
    versions.sort_by_key(|v| version_order(v));
    Ok(versions)
}

fn version_order(v: &str) -> Vec<u64> {
    v.split('.').map(|p| p.parse().unwrap_or(u64::MAX)).collect()
}

/// The folders a dataset may be found in, most specific layout first: today's short layout
/// directly in `input` (so an existing setup resolves exactly as before), then the mirror's
/// `physionet.org/files` when `input` is the folder above it. `input` being
/// `physionet.org/files` itself is the first case with the slug as the name.
fn bases(input: &Path) -> Vec<PathBuf> {
    let mut bases = vec![input.to_path_buf()];
    let mirror = input.join("physionet.org").join("files");
    if mirror.is_dir() {
        bases.push(mirror);
    }
    bases
}

/// Where `key` is in `input` (auto-detected) or in `explicit` (a `[datasets]` path, which wins),
/// descending into its version folder. `None` when the dataset is not there at all: whether that
/// is fatal is the build's decision.
pub(crate) fn locate(
    input: &Path,
    key: DatasetKey,
    explicit: Option<&Path>,
    pin: Option<&str>,
) -> Result<Option<Located>, LayoutError> {
    let dataset_dir = match explicit {
        Some(p) => Some(if p.is_absolute() { p.to_path_buf() } else { input.join(p) }),
        None => bases(input).into_iter().find_map(|base| {
            [key.short_name(), key.slug()].into_iter().map(|name| base.join(name)).find(|dir| dir.is_dir())
        }),
    };
    let Some(dir) = dataset_dir.filter(|d| d.is_dir()) else {
        return Ok(None);
    };
    let versions = version_folders(&dir)?;
    // A path that already is a version folder (an explicit `…/mimiciv/2.2`) names its version.
    let own_version = dir.file_name().and_then(|n| n.to_str()).filter(|n| is_version_name(n)).map(str::to_string);
    let located = match (pin, versions.as_slice()) {
        (Some(pin), _) if versions.iter().any(|v| v == pin) => {
            Located { folder: dir.join(pin), version: Some(pin.to_string()) }
        }
        (Some(pin), []) if own_version.as_deref() == Some(pin) => Located { folder: dir, version: own_version },
        (Some(pin), _) => {
            return Err(LayoutError::PinnedVersionMissing {
                dataset: key,
                folder: dir,
                pinned: pin.to_string(),
                versions,
            })
        }
        (None, []) => Located { folder: dir, version: own_version },
        (None, [only]) => Located { folder: dir.join(only), version: Some(only.clone()) },
        (None, _) => return Err(LayoutError::SeveralVersions { dataset: key, folder: dir, versions }),
    };
    Ok(Some(located))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names() {
        for ok in ["2.2", "1.0.0", "3", "10.0"] {
            assert!(is_version_name(ok), "{ok}");
        }
        for bad in ["", "index.html", "2.", ".2", "2..2", "v2.2", "files", "2.2-rc1"] {
            assert!(!is_version_name(bad), "{bad}");
        }
    }

    #[test]
    fn short_slug_and_mirror_layouts() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        // Short layout: the folder itself, no version.
        std::fs::create_dir_all(root.join("short/mimiciv/hosp")).unwrap();
        let got = locate(&root.join("short"), DatasetKey::MimicIv, None, None).unwrap().unwrap();
        assert_eq!(got, Located { folder: root.join("short/mimiciv"), version: None });
        // Mirror, given as <root> or as physionet.org/files: the slug and its one version.
        let files = root.join("m/physionet.org/files");
        std::fs::create_dir_all(files.join("reflacx-xray-localization/1.0.0/main_data")).unwrap();
        std::fs::write(files.join("reflacx-xray-localization/index.html"), "x").unwrap();
        for input in [root.join("m"), files.clone()] {
            let got = locate(&input, DatasetKey::Reflacx, None, None).unwrap().unwrap();
            assert_eq!(got.folder, files.join("reflacx-xray-localization/1.0.0"));
            assert_eq!(got.version.as_deref(), Some("1.0.0"));
        }
        assert_eq!(locate(&files, DatasetKey::EgdCxr, None, None).unwrap(), None);
    }

    #[test]
    fn several_versions_need_a_pin() {
        let t = tempfile::tempdir().unwrap();
        for v in ["3.1", "2.2", "10.0"] {
            std::fs::create_dir_all(t.path().join("mimiciv").join(v)).unwrap();
        }
        let err = locate(t.path(), DatasetKey::MimicIv, None, None).unwrap_err().to_string();
        assert!(err.contains("2.2, 3.1, 10.0") && err.contains("[versions] mimiciv = \"10.0\""), "{err}");
        let got = locate(t.path(), DatasetKey::MimicIv, None, Some("2.2")).unwrap().unwrap();
        assert_eq!(got.folder, t.path().join("mimiciv/2.2"));
        let err = locate(t.path(), DatasetKey::MimicIv, None, Some("2.0")).unwrap_err().to_string();
        assert!(err.contains("[versions] mimiciv = \"2.0\"") && err.contains("found: 2.2, 3.1, 10.0"), "{err}");
        // An explicit path to a version folder names its version and satisfies a matching pin.
        let explicit = t.path().join("mimiciv/3.1");
        let got = locate(t.path(), DatasetKey::MimicIv, Some(&explicit), Some("3.1")).unwrap().unwrap();
        assert_eq!(got, Located { folder: explicit, version: Some("3.1".into()) });
    }

    #[test]
    fn an_input_naming_one_dataset_or_its_version_folder_gets_the_folder_to_give_instead() {
        let t = tempfile::tempdir().unwrap();
        let files = t.path().join("physionet.org/files");
        std::fs::create_dir_all(files.join("mimiciv/2.2/hosp")).unwrap();
        let hint = input_hint(&files.join("mimiciv")).unwrap();
        assert!(hint.ends_with(&format!("(here {})", files.display())), "{hint}");
        let hint = input_hint(&files.join("mimiciv/2.2")).unwrap();
        assert!(hint.contains("the MIMIC-IV folder itself") && hint.ends_with(&format!("(here {})", files.display())));
        let hint = input_hint(&files.join("reflacx-xray-localization")).unwrap();
        assert!(hint.contains("REFLACX"), "{hint}");
        assert_eq!(input_hint(&files), None);
        assert_eq!(input_hint(t.path()), None);
    }
}
