//! The daemon's last link, kept between builds: a change to a clinical table (labevents, a new
//! chartevents) does not read the CXR metadata and edstays again to find the same cohort.
//!
//! The key is everything [`crate::pipeline::linker`] reads: each linker table's identity (device, inode,
//! size, mtime, ctime) and listed SHA-256, the subjects file's identity, the profile, the
//! window and whether the stays are linked. It is taken before the tables are read, so a file
//! that changes during the read has another identity at the next build, which links again.

use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::fingerprint::FileIdentity;
use crate::sums::Sums;

use crate::pipeline::linker::{LinkInputs, LinkTables, Links};

/// A cheap handle on the last link (the daemon holds one; a one-shot build has none).
#[derive(Clone, Default)]
pub(crate) struct LinkCache(Arc<Mutex<Option<Entry>>>);

impl std::fmt::Debug for LinkCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.0.lock().map(|e| e.is_some()).unwrap_or(false);
        f.debug_struct("LinkCache").field("held", &held).finish()
    }
}

struct Entry {
    key: LinkKey,
    links: Arc<Links>,
    inputs: LinkInputs,
}

/// What a link depends on, compared whole (no hash that could collide).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::pipeline) struct LinkKey(Vec<u8>);

impl LinkKey {
    /// The key of a link of `tables` under `config`; `None` when a table cannot be looked at
    /// (the link then reads it and says why).
    pub(in crate::pipeline) fn of(config: &Config, tables: &LinkTables<'_>, sums: &Sums) -> Option<Self> {
        let mut key = format!("{}|{}|{:?}|", config.profile.as_str(), config.window_days, config.cohort).into_bytes();
        let file = |key: &mut Vec<u8>, tag: &str, path: &Path| -> Option<()> {
            use std::os::unix::ffi::OsStrExt;
            let id = FileIdentity::of_path(path)?;
            key.extend_from_slice(tag.as_bytes());
            key.extend_from_slice(path.as_os_str().as_bytes());
            key.push(0);
            for v in [id.dev, id.ino, id.size, id.mtime_ns as u64, id.ctime_ns as u64] {
                key.extend_from_slice(&v.to_le_bytes());
            }
            match sums.expected(path) {
                Some(digest) => key.extend_from_slice(&digest),
                None => key.push(0),
            }
            Some(())
        };
        for (tag, path) in [("cxr", tables.cxr_metadata), ("stays", tables.edstays), ("sheet", tables.master_sheet)] {
            match path {
                Some(p) => file(&mut key, tag, p)?,
                None => key.extend_from_slice(b"-"),
            }
        }
        for phase in tables.reflacx_phases {
            file(&mut key, "reflacx", phase)?;
        }
        if let crate::cohort::CohortKind::Subjects(subjects) = &config.cohort {
            file(&mut key, "subjects", subjects)?;
        }
        Some(Self(key))
    }
}

impl LinkKey {
    /// The key as derived tables' manifests record it.
    pub(in crate::pipeline) fn digest(&self) -> String {
        use sha2::Digest as _;
        crate::sums::hex(&sha2::Sha256::digest(&self.0).into())
    }
}

impl LinkCache {
    /// The link made last under `key`, if that is the last one made.
    pub(in crate::pipeline) fn get(&self, key: &LinkKey) -> Option<(Arc<Links>, LinkInputs)> {
        let last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        last.as_ref().filter(|e| e.key == *key).map(|e| (Arc::clone(&e.links), e.inputs.clone()))
    }

    /// Keeps this link (replacing the last one).
    pub(in crate::pipeline) fn put(&self, key: LinkKey, links: &Arc<Links>, inputs: &LinkInputs) {
        let entry = Entry { key, links: Arc::clone(links), inputs: inputs.clone() };
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(entry);
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::{ConfigFile, Overrides};

    fn config(dir: &Path) -> Config {
        let flags = Overrides { input: Some(dir.into()), output: Some(dir.join("out")), ..Default::default() };
        Config::resolve(ConfigFile::default(), flags).unwrap()
    }

    #[test]
    fn the_key_changes_with_any_linker_table_or_setting_and_only_then() {
        let dir = tempfile::tempdir().unwrap();
        let (cxr, phase) = (dir.path().join("metadata.csv"), dir.path().join("metadata_phase_1.csv"));
        std::fs::write(&cxr, "dicom_id,subject_id\n").unwrap();
        std::fs::write(&phase, "id,dicom_id\n").unwrap();
        let phases: Vec<PathBuf> = vec![phase.clone()];
        let tables =
            LinkTables { cxr_metadata: Some(&cxr), edstays: None, reflacx_phases: &phases, master_sheet: None };
        let sums = Sums::default();
        let base = config(dir.path());
        let key = |c: &Config, t: &LinkTables<'_>| LinkKey::of(c, t, &sums);
        let first = key(&base, &tables).unwrap();
        assert_eq!(key(&base, &tables), Some(LinkKey(first.0.clone())), "nothing changed: the same key");

        let mut wider = base.clone();
        wider.window_days += 1;
        let mut cxr_cohort = base.clone();
        cxr_cohort.cohort = crate::cohort::CohortKind::Cxr;
        for other in [wider, cxr_cohort] {
            assert_ne!(key(&other, &tables).unwrap(), first, "a setting of the link changed");
        }
        let with_stays = LinkTables { edstays: Some(&phase), ..tables };
        assert_ne!(key(&base, &with_stays).unwrap(), first, "edstays is linked now");

        // The same bytes written again: another mtime and ctime, so another key.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&phase, "id,dicom_id\n").unwrap();
        assert_ne!(key(&base, &tables).unwrap(), first, "a REFLACX phase was rewritten");
        // A table that cannot be looked at: no key, the link reads it and says why.
        std::fs::remove_file(&cxr).unwrap();
        assert_eq!(key(&base, &tables), None);
    }
}
