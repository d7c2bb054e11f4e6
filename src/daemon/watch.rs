//! The watch actor: turns inotify events and periodic rescans into "these input files changed
//! and are complete". It knows nothing about MIMIC.
//!
//! A file is complete when its size and mtime have not changed for the settle period and, for
//! gzip, it decodes cleanly to its end (downloads are written in place, so a half-written file
//! looks like any other until then). Until then it is reported as unstable, so builds leave its
//! table alone. inotify can overflow or hit its watch limit: a full rescan runs periodically and
//! whenever notify says events were lost.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use notify::{RecursiveMode, Watcher};

use crate::shutdown::Shutdown;

/// What the watch tells the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// These files appeared, changed or disappeared and are now complete (or gone).
    Changed(Vec<PathBuf>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime_ns: i128,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    m.is_file()
        .then(|| Stamp { size: m.len(), mtime_ns: m.mtime() as i128 * 1_000_000_000 + i128::from(m.mtime_nsec()) })
}

struct Pending {
    stamp: Option<Stamp>,
    since: Instant,
    /// A stable gzip file that did not decode: wait for it to change again.
    broken: bool,
}

/// A cheap handle: the set of files not yet complete, for the build to skip.
#[derive(Clone, Default)]
pub struct WatchHandle {
    unstable: Arc<Mutex<HashSet<PathBuf>>>,
}

impl WatchHandle {
    pub fn unstable(&self) -> HashSet<PathBuf> {
        self.unstable.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

pub struct WatchConfig {
    pub root: PathBuf,
    /// Paths under the root that are not inputs (the output folder, when it is inside).
    pub ignore: Vec<PathBuf>,
    pub settle: Duration,
    pub rescan: Duration,
}

/// Starts the actor; events arrive on the returned channel until shutdown.
pub fn spawn(config: WatchConfig, shutdown: Shutdown) -> (WatchHandle, async_channel::Receiver<WatchEvent>) {
    let (tx, rx) = async_channel::bounded(16);
    let handle = WatchHandle::default();
    let actor = WatchActor { config, known: HashMap::new(), pending: HashMap::new(), handle: handle.clone(), tx };
    tokio::spawn(actor.run(shutdown));
    (handle, rx)
}

struct WatchActor {
    config: WatchConfig,
    known: HashMap<PathBuf, Stamp>,
    pending: HashMap<PathBuf, Pending>,
    handle: WatchHandle,
    tx: async_channel::Sender<WatchEvent>,
}

impl WatchActor {
    async fn run(mut self, mut shutdown: Shutdown) {
        // notify calls back on its own thread: hand paths over without blocking it.
        let (ntx, nrx) = async_channel::bounded::<Option<PathBuf>>(4096);
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(ev) if ev.need_rescan() => {
                let _ = ntx.try_send(None);
            }
            Ok(ev) => {
                for p in ev.paths {
                    if ntx.try_send(Some(p)).is_err() {
                        let _ = ntx.try_send(None); // queue full: fall back to a rescan
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "file watch error; relying on rescans");
                let _ = ntx.try_send(None);
            }
        });
        let mut rescan_every = self.config.rescan;
        let watched = match watcher.as_mut() {
            Ok(w) => w.watch(&self.config.root, RecursiveMode::Recursive).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match watched {
            Ok(()) => {}
            Err(e) => {
                // Typically the inotify watch limit ("No space left on device").
                tracing::error!(error = %e, root = %self.config.root.display(),
                    "cannot watch the input tree (raise fs.inotify.max_user_watches); polling instead");
                metrics::counter!(crate::telemetry::WATCH_ERRORS).increment(1);
                rescan_every = self.config.settle.max(Duration::from_secs(2));
            }
        }
        self.initial_scan();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut rescan = tokio::time::interval(rescan_every);
        rescan.reset();
        loop {
            tokio::select! {
                _ = shutdown.recv() => return,
                msg = nrx.recv() => match msg {
                    Ok(Some(path)) => {
                        metrics::counter!(crate::telemetry::WATCH_EVENTS, "kind" => "inotify").increment(1);
                        self.touch(path);
                    }
                    Ok(None) => {
                        metrics::counter!(crate::telemetry::WATCH_EVENTS, "kind" => "overflow").increment(1);
                        self.rescan();
                    }
                    Err(_) => {}
                },
                _ = rescan.tick() => {
                    metrics::counter!(crate::telemetry::WATCH_EVENTS, "kind" => "rescan").increment(1);
                    self.rescan();
                }
                _ = tick.tick() => {
                    if !self.settle().await {
                        return;
                    }
                }
            }
        }
    }

    fn ignored(&self, path: &Path) -> bool {
        self.config.ignore.iter().any(|i| path.starts_with(i))
    }

    fn walk(&self) -> HashMap<PathBuf, Stamp> {
        let mut found = HashMap::new();
        let mut stack = vec![self.config.root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                let p = e.path();
                if self.ignored(&p) {
                    continue;
                }
                match e.file_type() {
                    Ok(t) if t.is_dir() => stack.push(p),
                    Ok(t) if t.is_file() => {
                        if let Some(s) = stamp(&p) {
                            found.insert(p, s);
                        }
                    }
                    _ => {}
                }
            }
        }
        found
    }

    /// Files modified within the settle period at start-up may still be arriving.
    fn initial_scan(&mut self) {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos() as i128;
        let settle = self.config.settle.as_nanos() as i128;
        for (p, s) in self.walk() {
            if now - s.mtime_ns < settle || crate::source::is_gzip_name(&p) && !gzip_complete(&p) {
                self.pending.insert(p.clone(), Pending { stamp: Some(s), since: Instant::now(), broken: false });
            }
            self.known.insert(p, s);
        }
        self.publish_unstable();
    }

    fn touch(&mut self, path: PathBuf) {
        if self.ignored(&path) || path.is_dir() {
            return;
        }
        let s = stamp(&path);
        match self.pending.get_mut(&path) {
            Some(p) if p.stamp == s => {}
            Some(p) => {
                *p = Pending { stamp: s, since: Instant::now(), broken: false };
            }
            None if self.known.get(&path).copied() == s => {}
            None => {
                self.pending.insert(path, Pending { stamp: s, since: Instant::now(), broken: false });
            }
        }
        self.publish_unstable();
    }

    fn rescan(&mut self) {
        let now = self.walk();
        let gone: Vec<PathBuf> = self.known.keys().filter(|p| !now.contains_key(*p)).cloned().collect();
        for p in gone {
            self.touch(p);
        }
        for (p, s) in now {
            if self.known.get(&p) != Some(&s) {
                self.touch(p);
            }
        }
    }

    /// Moves files that stayed unchanged for the settle period (and decode, for gzip) out of
    /// pending and reports them. Returns false when the daemon is gone.
    async fn settle(&mut self) -> bool {
        let mut ready = Vec::new();
        let paths: Vec<PathBuf> = self.pending.keys().cloned().collect();
        for path in paths {
            let current = stamp(&path);
            let Some(p) = self.pending.get_mut(&path) else { continue };
            if p.stamp != current {
                *p = Pending { stamp: current, since: Instant::now(), broken: false };
                continue;
            }
            if p.broken || p.since.elapsed() < self.config.settle {
                continue;
            }
            if current.is_some() && crate::source::is_gzip_name(&path) {
                let check = path.clone();
                let ok = tokio::task::spawn_blocking(move || gzip_complete(&check)).await.unwrap_or(false);
                if !ok {
                    tracing::warn!(path = %path.display(), "gzip file does not decode to its end: waiting for it to change");
                    if let Some(p) = self.pending.get_mut(&path) {
                        p.broken = true;
                    }
                    continue;
                }
            }
            self.pending.remove(&path);
            match current {
                Some(s) => self.known.insert(path.clone(), s),
                None => self.known.remove(&path),
            };
            ready.push(path);
        }
        self.publish_unstable();
        if ready.is_empty() {
            return true;
        }
        ready.sort();
        self.tx.send(WatchEvent::Changed(ready)).await.is_ok()
    }

    fn publish_unstable(&self) {
        if let Ok(mut u) = self.handle.unstable.lock() {
            *u = self.pending.keys().cloned().collect();
            metrics::gauge!(crate::telemetry::INPUTS_PENDING).set(u.len() as f64);
        }
    }
}

/// True when every gzip member of the file decodes to its end.
pub fn gzip_complete(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path) else { return false };
    let Ok(mut d) = crate::gzip::decoder(std::io::BufReader::with_capacity(1 << 16, file)) else { return false };
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match d.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
}
