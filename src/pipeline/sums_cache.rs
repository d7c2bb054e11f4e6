//! The daemon's last parse of the datasets' checksum files, kept between builds. A mirror's
//! MIMIC-CXR-JPG `SHA256SUMS.txt` lists a million files, which a build reads twice (the tables'
//! lines, then the lines of the cohort's copied folders): without the cache, most of a rebuild
//! that finds nothing to do. A parse is reused while every checksum file keeps the identity (device,
//! inode, size, mtime, ctime) it had before it was read; the copied folders' lines also need
//! the same link (the folders come from the cohort).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::fingerprint::FileIdentity;
use crate::layout::DatasetKey;
use crate::sums::{Sums, SUMS_FILE};

/// Each dataset's checksum file and its identity (`None`: absent or unreadable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SumsKey(Vec<(PathBuf, Option<FileIdentity>)>);

impl SumsKey {
    fn of(config: &Config) -> Self {
        let file = |key| config.datasets.get(key).join(SUMS_FILE);
        Self(
            DatasetKey::ALL
                .into_iter()
                .map(file)
                .map(|f| (FileIdentity::of_path(&f), f))
                .map(|(id, f)| (f, id))
                .collect(),
        )
    }
}

/// A cheap handle on the last parse (the daemon holds one; a one-shot build has none).
#[derive(Clone, Default)]
pub(crate) struct SumsCache(Arc<Mutex<Option<Entry>>>);

struct Entry {
    key: SumsKey,
    tables: Sums,
    /// With the copied folders' lines, for the link of this digest.
    folders: Option<(String, Sums)>,
}

impl std::fmt::Debug for SumsCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.0.lock().map(|e| e.is_some()).unwrap_or(false);
        f.debug_struct("SumsCache").field("held", &held).finish()
    }
}

impl SumsCache {
    /// The tables' lines of every dataset's checksum file: the last parse if no file changed
    /// since, else parsed now (and kept). The key goes to [`Self::add_folders`].
    pub(crate) fn tables(&self, config: &Config) -> (Sums, SumsKey) {
        let key = SumsKey::of(config);
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = last.as_ref().filter(|e| e.key == key) {
            tracing::debug!("checksum files unchanged: the last parse is reused");
            return (entry.tables.clone(), key);
        }
        let tables = Sums::load(config);
        *last = Some(Entry { key: key.clone(), tables: tables.clone(), folders: None });
        (tables, key)
    }

    /// `sums` with the lines of the copied folders `add` adds: the last ones if the checksum
    /// files (`key`) and the link (`link`) are the same, else added now (and kept).
    pub(crate) fn add_folders(&self, key: &SumsKey, link: &str, sums: &mut Sums, add: impl FnOnce(&mut Sums)) {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let entry = last.as_mut().filter(|e| e.key == *key);
        if let Some((_, with_folders)) = entry.as_ref().and_then(|e| e.folders.as_ref()).filter(|(l, _)| l == link) {
            tracing::debug!("copied folders' checksum lines reused");
            *sums = with_folders.clone();
            return;
        }
        add(sums);
        if let Some(entry) = entry {
            entry.folders = Some((link.to_string(), sums.clone()));
        }
    }
}

/// The tables' lines of the checksum files: the last parse of `cache` if none changed, with
/// the key for [`SumsCache::add_folders`]; parsed now without a cache.
pub(crate) fn table_sums(config: &Config, cache: Option<&SumsCache>) -> (Sums, Option<SumsKey>) {
    match cache {
        Some(cache) => {
            let (sums, key) = cache.tables(config);
            (sums, Some(key))
        }
        None => (Sums::load(config), None),
    }
}
