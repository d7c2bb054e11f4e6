//! The watch actor: turns inotify events and periodic rescans of the folders a build reads into
//! "these input files changed and are complete". It knows nothing about MIMIC.
//!
//! It watches a set of folders (the table folders and dataset roots, not recursive, and the
//! cohort's copied folders), handed to it after each build, never the whole input tree: a real
//! PhysioNet mirror holds a million files of which a build reads a few thousand. A file is
//! complete when its size, mtime and ctime have not changed for the settle period (downloads
//! are written in place); until then it is reported as unstable, so builds leave its table
//! alone. A download that stalls longer than the settle period looks stable: the build that
//! reads it finds the gzip cut short and says so ([`WatchHandle::hold_incomplete`]), and the
//! file is held as unstable until it changes again. So a changed table is decoded once, by the
//! build, not once here to check it and again to build. inotify can overflow or hit its watch
//! limit: a rescan of the same set runs periodically and whenever notify says events were lost.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use notify::{RecursiveMode, Watcher};

use super::known::Known;
use crate::fingerprint::FileIdentity;
use crate::pipeline::read_set::WatchDir;
use crate::shutdown::Shutdown;

/// How often pending files are looked at.
const SETTLE_TICK: Duration = Duration::from_millis(500);
/// Recursive watch folders (transcript folders) are walked this deep at most.
const MAX_DEPTH: usize = 8;
/// Path events buffered between notify's thread and the actor before falling back to a rescan.
const EVENT_QUEUE: usize = 4096;

/// What the watch tells the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum WatchEvent {
    /// These files appeared, changed or disappeared and are now complete (or gone).
    Changed(Vec<PathBuf>),
    /// A rescan found this many files gone that no event had reported.
    Removed(usize),
}

/// A watched file's identity: size, mtime and ctime tell a file still being written, and the
/// inode one replaced by another.
type Stamp = FileIdentity;

/// Whether `path` is a file of the folder set.
fn in_set(folders: &[WatchDir], path: &Path) -> bool {
    folders.iter().any(|f| path.parent() == Some(f.path.as_path()) || (f.recursive && path.starts_with(&f.path)))
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    m.is_file().then(|| FileIdentity::of(&m))
}

struct Pending {
    stamp: Option<Stamp>,
    since: Instant,
    /// When the file was first seen changing (kept across changes: how long it has waited).
    first_seen: Instant,
    /// A stable file a build found cut short: held until it changes again.
    held: bool,
}

impl Pending {
    fn new(stamp: Option<Stamp>) -> Self {
        Self { stamp, since: Instant::now(), first_seen: Instant::now(), held: false }
    }

    /// A change: the settle period starts again, the wait goes on.
    fn changed(&mut self, stamp: Option<Stamp>) {
        *self = Self { first_seen: self.first_seen, ..Self::new(stamp) };
    }
}

/// A cheap handle: the files not yet complete, and the folder set to watch. The actor stops
/// when the last handle is dropped (a reload replaces it without leaking the inotify instance).
#[derive(Clone)]
pub(super) struct WatchHandle {
    unstable: Arc<Mutex<HashSet<PathBuf>>>,
    control: async_channel::Sender<Control>,
}

/// What the daemon tells the actor.
enum Control {
    Folders(Vec<WatchDir>),
    HoldIncomplete(Vec<PathBuf>),
}

impl WatchHandle {
    pub(super) fn unstable(&self) -> HashSet<PathBuf> {
        self.unstable.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Watches exactly these folders from now on. Their current files are taken as they are
    /// (the build that named them has just read them).
    pub(super) fn set_folders(&self, folders: Vec<WatchDir>) {
        let _ = self.control.try_send(Control::Folders(folders));
    }

    /// Files a build found cut short (a gzip ending inside a member): unstable until they
    /// change, so later builds leave their tables alone instead of decoding them again.
    pub(super) fn hold_incomplete(&self, paths: Vec<PathBuf>) {
        if paths.is_empty() {
            return;
        }
        // Unstable at once, for a build that starts before the actor takes the message.
        if let Ok(mut unstable) = self.unstable.lock() {
            unstable.extend(paths.iter().cloned());
        }
        let _ = self.control.try_send(Control::HoldIncomplete(paths));
    }
}

pub(super) struct WatchConfig {
    pub folders: Vec<WatchDir>,
    /// Paths that are not inputs (the output folder, when it is inside the input).
    pub ignore: Vec<PathBuf>,
    pub settle: Duration,
    pub rescan: Duration,
}

/// Starts the actor; events arrive on the returned channel until shutdown or until every
/// handle is dropped. The first scan is done when this returns, so the first build starts
/// from the watcher's view of which files are still arriving.
pub(super) fn spawn(config: WatchConfig, shutdown: Shutdown) -> (WatchHandle, async_channel::Receiver<WatchEvent>) {
    let (tx, rx) = async_channel::bounded(16);
    let (control_tx, control_rx) = async_channel::bounded(4);
    let handle = WatchHandle { unstable: Arc::default(), control: control_tx };
    let mut actor = WatchActor {
        folders: config.folders,
        ignore: config.ignore,
        settle: config.settle,
        rescan: config.rescan,
        watched: HashSet::new(),
        known: Known::default(),
        pending: HashMap::new(),
        unstable: Arc::clone(&handle.unstable),
        tx,
    };
    let (mut watcher, queue) = start_notify();
    // File-system walks (a million files beside a mirror) run off the async workers:
    // `block_in_place` hands this worker's other tasks (the metrics listener) to another.
    tokio::task::block_in_place(|| {
        actor.update_watches(watcher.as_mut());
        actor.initial_scan();
    });
    tokio::spawn(actor.run(watcher, queue, control_rx, shutdown));
    (handle, rx)
}

struct WatchActor {
    folders: Vec<WatchDir>,
    ignore: Vec<PathBuf>,
    settle: Duration,
    rescan: Duration,
    /// Folders with an inotify watch; the others (not there yet, or over the limit) are
    /// covered by rescans.
    watched: HashSet<PathBuf>,
    known: Known,
    pending: HashMap<PathBuf, Pending>,
    unstable: Arc<Mutex<HashSet<PathBuf>>>,
    tx: async_channel::Sender<WatchEvent>,
}

/// notify's callback thread hands paths over without blocking; `None` asks for a rescan.
/// When the queue is full even that cannot be sent: the thread raises `overflowed` instead,
/// and the actor rescans after the message it takes next (the queue is full, so one comes).
struct PathQueue {
    paths: async_channel::Receiver<Option<PathBuf>>,
    overflowed: Arc<AtomicBool>,
}

fn start_notify() -> (Option<notify::RecommendedWatcher>, Option<PathQueue>) {
    let (ntx, nrx) = async_channel::bounded::<Option<PathBuf>>(EVENT_QUEUE);
    let overflowed = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&overflowed);
    let send = move |msg: Option<PathBuf>| {
        if ntx.try_send(msg).is_err() {
            flag.store(true, Ordering::Relaxed);
        }
    };
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
        Ok(ev) if ev.need_rescan() => send(None),
        // notify asks inotify for IN_OPEN too: every folder a rescan lists and every file a
        // build reads would come back as an event, and a rescan of more folders than the
        // queue holds would overflow it and call for another rescan, without end.
        Ok(ev) if is_only_a_read(&ev.kind) => {}
        Ok(ev) => ev.paths.into_iter().for_each(|p| send(Some(p))),
        Err(e) => {
            tracing::warn!(error = %e, "file watch error; relying on rescans");
            send(None);
        }
    });
    match watcher {
        Ok(w) => (Some(w), Some(PathQueue { paths: nrx, overflowed })),
        Err(e) => {
            tracing::error!(error = %e, "cannot start inotify; rescans only");
            metrics::counter!(crate::telemetry::WATCH_ERRORS).increment(1);
            (None, None)
        }
    }
}

/// An event that changes nothing: a file or folder opened, read or closed unwritten.
fn is_only_a_read(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    matches!(kind, EventKind::Access(access) if !matches!(access, AccessKind::Close(AccessMode::Write)))
}

impl WatchActor {
    async fn run(
        mut self,
        mut watcher: Option<notify::RecommendedWatcher>,
        mut queue: Option<PathQueue>,
        control: async_channel::Receiver<Control>,
        mut shutdown: Shutdown,
    ) {
        let mut settle = tokio::time::interval(SETTLE_TICK);
        let mut rescan = tokio::time::interval(self.rescan);
        rescan.reset();
        loop {
            let next_path = async {
                match &queue {
                    Some(q) => q.paths.recv().await.ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.recv() => return,
                update = control.recv() => match update {
                    Ok(Control::Folders(folders)) => tokio::task::block_in_place(|| self.set_folders(folders, watcher.as_mut())),
                    Ok(Control::HoldIncomplete(paths)) => self.hold(paths),
                    Err(_) => return, // every handle dropped: this watcher is replaced
                },
                msg = next_path => match msg {
                    Some(Some(path)) => {
                        metrics::counter!(crate::telemetry::WATCH_EVENTS, "kind" => "inotify").increment(1);
                        self.touch(path);
                        if queue.as_ref().is_some_and(|q| q.overflowed.swap(false, Ordering::Relaxed)) {
                            metrics::counter!(crate::telemetry::WATCH_EVENTS, "kind" => "overflow").increment(1);
                            tokio::task::block_in_place(|| self.rescan(watcher.as_mut()));
                        }
                    }
                    Some(None) => {
                        if let Some(q) = &queue {
                            q.overflowed.store(false, Ordering::Relaxed);
                        }
                        metrics::counter!(crate::telemetry::WATCH_EVENTS, "kind" => "overflow").increment(1);
                        tokio::task::block_in_place(|| self.rescan(watcher.as_mut()));
                    }
                    // notify's thread ended: no more events, rescans only (never a busy loop).
                    None => queue = None,
                },
                _ = rescan.tick() => {
                    metrics::counter!(crate::telemetry::WATCH_EVENTS, "kind" => "rescan").increment(1);
                    tokio::task::block_in_place(|| self.rescan(watcher.as_mut()));
                }
                _ = settle.tick(), if !self.pending.is_empty() => {
                    if !self.settle().await {
                        return;
                    }
                }
            }
        }
    }

    fn ignored(&self, path: &Path) -> bool {
        self.ignore.iter().any(|i| path.starts_with(i))
    }

    /// Adds an inotify watch to every folder of the set that has none, drops the others'.
    fn update_watches(&mut self, watcher: Option<&mut notify::RecommendedWatcher>) {
        let Some(watcher) = watcher else { return };
        let wanted: HashSet<&PathBuf> = self.folders.iter().map(|f| &f.path).collect();
        let stale: Vec<PathBuf> = self.watched.iter().filter(|p| !wanted.contains(p)).cloned().collect();
        for path in stale {
            let _ = watcher.unwatch(&path);
            self.watched.remove(&path);
        }
        let mut limit_hit = false;
        for f in &self.folders {
            if self.watched.contains(&f.path) || limit_hit || !f.path.is_dir() {
                continue;
            }
            let mode = if f.recursive { RecursiveMode::Recursive } else { RecursiveMode::NonRecursive };
            match watcher.watch(&f.path, mode) {
                Ok(()) => {
                    self.watched.insert(f.path.clone());
                }
                Err(e)
                    if matches!(&e.kind, notify::ErrorKind::MaxFilesWatch)
                        || e.to_string().contains("No space left on device") =>
                {
                    tracing::error!(error = %e, watched = self.watched.len(), wanted = self.folders.len(),
                        "inotify watch limit reached (raise fs.inotify.max_user_watches): the other folders are rescanned");
                    metrics::counter!(crate::telemetry::WATCH_ERRORS).increment(1);
                    limit_hit = true;
                }
                Err(e) => tracing::debug!(error = %e, folder = %f.path.display(), "not watched; rescans cover it"),
            }
        }
        metrics::gauge!(crate::telemetry::WATCHES).set(self.watched.len() as f64);
    }

    /// Files modified within the settle period at start-up may still be arriving.
    fn initial_scan(&mut self) {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos() as i64;
        let settle = self.settle.as_nanos() as i64;
        let (known, pending) = (&mut self.known, &mut self.pending);
        walk(&self.folders, &self.ignore, &mut |p, s| {
            known.insert(&p, s);
            if now - s.mtime_ns.max(s.ctime_ns) < settle {
                pending.insert(p, Pending::new(Some(s)));
            }
        });
        self.publish_unstable();
    }

    /// A new folder set: files of folders that joined it are taken as they are, files of
    /// folders that left it are forgotten.
    fn set_folders(&mut self, folders: Vec<WatchDir>, watcher: Option<&mut notify::RecommendedWatcher>) {
        if folders == self.folders {
            return;
        }
        self.folders = folders;
        self.update_watches(watcher);
        self.known.begin_sweep();
        let known = &mut self.known;
        walk(&self.folders, &self.ignore, &mut |p, s| {
            if known.see(&p).is_none() {
                known.insert_new(&p, s);
            }
        });
        self.known.end_sweep();
        let folders = &self.folders;
        self.pending.retain(|p, _| in_set(folders, p));
        self.publish_unstable();
        tracing::debug!(folders = self.folders.len(), files = self.known.len(), "watch set updated");
    }

    /// Holds files a build found cut short as pending until they change. Each is held with the
    /// identity it had when it was last reported complete (what the build read), so a change
    /// since then is still seen as one; a file already pending is changing and left to settle.
    fn hold(&mut self, paths: Vec<PathBuf>) {
        for path in paths {
            if self.pending.contains_key(&path) || self.ignored(&path) {
                continue;
            }
            // Not known (a watch set that changed since): held as it is now.
            let mut held = Pending::new(self.known.get(&path).or_else(|| stamp(&path)));
            held.held = true;
            self.pending.insert(path, held);
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
            Some(p) => p.changed(s),
            None if self.known.get(&path) == s => {}
            None => {
                self.pending.insert(path, Pending::new(s));
            }
        }
        self.publish_unstable();
    }

    fn rescan(&mut self, watcher: Option<&mut notify::RecommendedWatcher>) {
        // Folders that appeared since (a study downloaded later) get their watch now.
        if self.watched.len() < self.folders.len() {
            self.update_watches(watcher);
        }
        self.known.begin_sweep();
        let mut changed = Vec::new();
        let known = &mut self.known;
        walk(&self.folders, &self.ignore, &mut |p, s| {
            if known.see(&p) != Some(s) {
                changed.push(p);
            }
        });
        // Files gone without an event (pending ones are followed by path, below).
        let gone = self.known.end_sweep();
        let vanished: Vec<PathBuf> = self.pending.keys().filter(|p| stamp(p).is_none()).cloned().collect();
        for p in changed.into_iter().chain(vanished) {
            self.touch(p);
        }
        if gone > 0 {
            let _ = self.tx.try_send(WatchEvent::Removed(gone));
        }
    }

    /// Moves files that stayed unchanged for the settle period out of pending and reports
    /// them. Returns false when the daemon is gone.
    async fn settle(&mut self) -> bool {
        let mut ready = Vec::new();
        let paths: Vec<PathBuf> = self.pending.keys().cloned().collect();
        for path in paths {
            let current = stamp(&path);
            let Some(p) = self.pending.get_mut(&path) else { continue };
            if p.stamp != current {
                p.changed(current);
                continue;
            }
            if p.held || p.since.elapsed() < self.settle {
                continue;
            }
            self.pending.remove(&path);
            match current {
                Some(s) => self.known.insert(&path, s),
                None => self.known.remove(&path),
            }
            ready.push(path);
        }
        self.publish_unstable();
        if ready.is_empty() {
            return true;
        }
        ready.sort();
        self.tx.send(WatchEvent::Changed(ready)).await.is_ok()
    }

    /// The pending files to builds (which leave their tables alone), `/status` and the gauges.
    fn publish_unstable(&self) {
        use crate::telemetry::{self, PendingInputs, PENDING_LISTED};
        if let Ok(mut u) = self.unstable.lock() {
            *u = self.pending.keys().cloned().collect();
        }
        let oldest = self.pending.values().map(|p| p.first_seen.elapsed().as_secs()).max().unwrap_or(0);
        metrics::gauge!(telemetry::INPUTS_PENDING).set(self.pending.len() as f64);
        metrics::gauge!(telemetry::INPUTS_PENDING_OLDEST).set(oldest as f64);
        // Called on every event while a download runs: the first few paths are picked in
        // linear time and only they become text, not every pending path sorted each time.
        let mut paths: Vec<&PathBuf> = self.pending.keys().collect();
        if paths.len() > PENDING_LISTED {
            paths.select_nth_unstable(PENDING_LISTED);
            paths.truncate(PENDING_LISTED);
        }
        paths.sort_unstable();
        let first = paths.iter().map(|p| p.display().to_string()).collect();
        let pending = PendingInputs { count: self.pending.len(), oldest_seconds: oldest, first };
        telemetry::update_status(|s| s.pending_inputs = pending);
    }
}

/// Calls `each` with every file of the folder set (recursive folders to [`MAX_DEPTH`]).
fn walk(folders: &[WatchDir], ignore: &[PathBuf], each: &mut dyn FnMut(PathBuf, Stamp)) {
    for f in folders {
        let mut stack = vec![(f.path.clone(), 0)];
        while let Some((dir, depth)) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                let p = e.path();
                if ignore.iter().any(|i| p.starts_with(i)) {
                    continue;
                }
                match e.file_type() {
                    Ok(t) if t.is_dir() && f.recursive && depth < MAX_DEPTH => stack.push((p, depth + 1)),
                    Ok(t) if t.is_file() || t.is_symlink() => {
                        if let Some(s) = stamp(&p) {
                            each(p, s);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}
