//! `mimic-eye run`: the daemon. Builds, then keeps the output equal to what a clean build of
//! the input would give, for weeks, unattended.
//!
//! It is a reconciler, not an event processor. An event (inotify, a rescan, SIGHUP, a checkup
//! that finds a published file changed) only marks the state dirty; the next build compares
//! what the input is now with what each job last recorded and redoes what differs. So a lost or
//! coalesced event costs nothing but latency, and a restart after a crash is an ordinary build.
//! Where each piece of "incremental" lives:
//! - what changed in the input: [`watch`] (inotify plus rescans of the folders the last build
//!   read, pending files held until stable) and `crate::fingerprint` (size, mtime and sampled
//!   bytes of each table);
//! - what a job last did: its manifest (`pipeline::manifest`, `pipeline::publish`): the input
//!   fingerprint, settings, cohort and files it published;
//! - what to redo: `pipeline::planner::decide` (skip, whole table, or only the patients who
//!   joined or left), and per file `same_content` at publish (`pipeline::publish`: a rewritten
//!   file whose bytes are unchanged is not replaced, so it keeps its inode and mtime);
//! - copies: `pipeline::folders::copied_before` (a file copied by an earlier build is kept while
//!   its source's identity and listed digest are unchanged);
//! - the cohort: `pipeline::link_cache` (the last link, reused while the linker tables'
//!   identities, listed digests and the settings are unchanged: a clinical change relinks
//!   nothing);
//! - a download that stalls: the build's own read finds the gzip cut short and [`watch`] holds
//!   the file as pending until it changes (decoded once, by the build);
//! - drift behind its back: the checkup here ([`check_output_and_trim`]) stats every published
//!   file and redoes the jobs whose files changed.
//!
//! Shutdown (SIGTERM, SIGINT) cancels a running build: readers stop, nothing unfinished is
//! published, and the next start resumes from the last published state. SIGHUP reloads the
//! config. systemd is told READY, STATUS, WATCHDOG and STOPPING through `NOTIFY_SOCKET`.

mod known;
mod notify;
mod outcome;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use metrics::{counter, gauge};
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{Config, ConfigFile, Overrides};
use crate::pipeline::state;
use crate::pipeline::{self, BuildOptions};
use crate::progress::ProgressBars;
use crate::shutdown::{cancel_pair, Shutdown, ShutdownTrigger};
use crate::telemetry::{self, BuildKind, BuildResult, Phase};

use outcome::{building_status, count_build, record, STATUS_EVERY};

/// How long a cancelled build may take to stop before the daemon exits anyway; with the
/// runtime's own shutdown timeout (main.rs) a stop stays under systemd's 5 s.
const STOP_GRACE: Duration = Duration::from_millis(2500);

fn load(path: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Config> {
    let file = match path {
        Some(p) => ConfigFile::load(p)?,
        None => ConfigFile::default(),
    };
    Config::resolve(file, overrides.clone())
}

/// Runs the daemon until SIGTERM or SIGINT: builds, watches, serves metrics, reloads on SIGHUP.
pub async fn run(config_path: Option<PathBuf>, overrides: Overrides) -> anyhow::Result<()> {
    let config = load(config_path.as_deref(), &overrides)?;
    tracing::info!(
        version = crate::version::text(),
        config = %config_path.as_deref().map_or("none (flags and defaults)".into(), |p| p.display().to_string()),
        input = %config.input.display(),
        output = %config.output.display(),
        listen = %config.metrics_addr,
        "mimic-eye starting"
    );
    let lock = state::lock_output(&config.output)?;
    let trigger = ShutdownTrigger::new();
    let alive = serve_metrics(&config, &trigger).await?;
    let (reload_tx, reload_rx) = async_channel::bounded::<()>(1);
    spawn_signal_handler(trigger.clone(), reload_tx)?;
    let mut daemon = Daemon::new(config_path, overrides, config, trigger.clone(), lock);
    notify::send("READY=1\nSTATUS=starting the first build");
    let exit = daemon.serve(&mut trigger.subscribe(), &reload_rx).await;
    alive.store(false, Ordering::Relaxed);
    gauge!(telemetry::UP).set(0.0);
    trigger.trigger();
    tracing::info!("stopped");
    exit
}

/// `/metrics`, `/healthz` and `/status` on the configured address; the flag says "alive".
async fn serve_metrics(config: &Config, trigger: &ShutdownTrigger) -> anyhow::Result<Arc<AtomicBool>> {
    let metrics = telemetry::install_recorder()?;
    telemetry::status::set_page_renderer(crate::pipeline::report::live_page);
    let alive = Arc::new(AtomicBool::new(true));
    let listener = telemetry::bind(config.metrics_addr).await?;
    tracing::info!(addr = %config.metrics_addr, "serving /metrics, /healthz and /status");
    let flag = Arc::clone(&alive);
    tokio::spawn(telemetry::serve(listener, metrics, move || flag.load(Ordering::Relaxed), trigger.subscribe()));
    gauge!(telemetry::UP).set(1.0);
    gauge!(telemetry::SUCCESS_MAX_AGE).set(config.alert_max_age_hours as f64 * 3600.0);
    Ok(alive)
}

/// The daemon's state between builds: the running config, its watcher and the output checkup.
struct Daemon {
    config_path: Option<PathBuf>,
    overrides: Overrides,
    config: Config,
    trigger: ShutdownTrigger,
    watch: watch::WatchHandle,
    events: async_channel::Receiver<watch::WatchEvent>,
    /// When the output checkup is next due.
    next_checkup: tokio::time::Instant,
    /// A build is due (inputs changed, a reload, a repair).
    dirty: bool,
    /// The output's lock, checked before each build and checkup (see [`state::OutputLock`]).
    lock: state::OutputLock,
    /// systemd's watchdog, pinged from this loop's own progress.
    watchdog: notify::Watchdog,
    first: bool,
    /// The last link: a build whose linker tables did not change reuses it.
    links: pipeline::LinkCache,
    /// The last parse of the checksum files, reused while they are unchanged.
    sums: pipeline::SumsCache,
}

/// What ended a build: it finished, or a stop cancelled it.
enum Built {
    Finished,
    Stopped,
}

impl Daemon {
    /// The output checkup, on a blocking thread (it stats every published file), and when
    /// the next is due.
    async fn run_checkup(&mut self) -> anyhow::Result<usize> {
        self.lock.check()?;
        let started = std::time::Instant::now();
        let output = self.config.output.clone();
        let checked = tokio::task::spawn_blocking(move || check_output_and_trim(&output))
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("the output checkup failed: {e}")));
        self.next_checkup = next_checkup(&self.config, started.elapsed());
        checked
    }

    fn new(
        config_path: Option<PathBuf>,
        overrides: Overrides,
        config: Config,
        trigger: ShutdownTrigger,
        lock: state::OutputLock,
    ) -> Self {
        let (watch, events) = watch::spawn(watch_config(&config), trigger.subscribe());
        let next_checkup = next_checkup(&config, Duration::ZERO);
        let watchdog = notify::Watchdog::from_env();
        Self {
            config_path,
            overrides,
            config,
            trigger,
            watch,
            events,
            next_checkup,
            dirty: true,
            lock,
            watchdog,
            first: true,
            links: pipeline::LinkCache::default(),
            sums: pipeline::SumsCache::default(),
        }
    }

    /// Builds whenever something calls for it, until a stop; the result is the exit's.
    async fn serve(&mut self, shutdown: &mut Shutdown, reload: &async_channel::Receiver<()>) -> anyhow::Result<()> {
        loop {
            if self.dirty {
                if let Err(e) = self.lock.check() {
                    tracing::error!(error = %e, "exiting so that the service restarts on its own output");
                    return Err(e.into());
                }
                if let Built::Stopped = self.build(shutdown).await {
                    return Ok(());
                }
                // Changes that completed during the build call for another pass.
                while self.events.try_recv().is_ok() {
                    self.dirty = true;
                }
                if self.dirty {
                    continue;
                }
            }
            tokio::select! {
                _ = shutdown.recv() => {
                    notify::send("STOPPING=1\nSTATUS=stopping");
                    return Ok(());
                }
                _ = self.watchdog.due() => self.watchdog.ping(),
                _ = tokio::time::sleep_until(self.next_checkup) => match self.run_checkup().await {
                    Ok(0) => {}
                    Ok(damaged) => {
                        tracing::warn!(jobs = damaged, "published files were removed or changed behind the daemon's back: rebuilding them");
                        self.dirty = true;
                    }
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "the output is gone: exiting so that the service restarts and rebuilds it");
                        return Err(e);
                    }
                },
                ev = self.events.recv() => match ev {
                    Ok(watch::WatchEvent::Changed(paths)) => {
                        tracing::info!(files = paths.len(), first = %paths[0].display(), "input changed");
                        self.dirty = true;
                    }
                    Ok(watch::WatchEvent::Removed(files)) => {
                        tracing::info!(files, "input files removed");
                        self.dirty = true;
                    }
                    // The watcher ended: without it the daemon would serve a stale output as
                    // healthy. Exit non-zero so that the service manager restarts it.
                    Err(_) if shutdown.is_shutdown() => return Ok(()),
                    Err(_) => anyhow::bail!("the input watcher stopped"),
                },
                _ = reload.recv() => self.reload(),
            }
        }
    }

    /// One build, cancelled by a stop (which waits up to [`STOP_GRACE`] for it).
    async fn build(&mut self, shutdown: &mut Shutdown) -> Built {
        self.dirty = false;
        let (mut cancel, token) = cancel_pair();
        let unstable = self.watch.unstable();
        let options = BuildOptions {
            cancel: token,
            unstable: unstable.clone(),
            cut_short_is_pending: true,
            link_cache: Some(self.links.clone()),
            sums_cache: Some(self.sums.clone()),
            ..Default::default()
        };
        let fresh = self.first && !self.config.output.join("summary.json").exists();
        let kind = if fresh { BuildKind::Full } else { BuildKind::Incremental };
        self.first = false;
        let started = Instant::now();
        telemetry::update_status(|s| {
            s.phase = Phase::Building;
            s.build += 1;
        });
        gauge!(telemetry::BUILD_RUNNING).set(1.0);
        notify::send(&format!("STATUS=building ({})", kind.label()));
        let build = pipeline::build(self.config.clone(), ProgressBars::hidden(), options);
        tokio::pin!(build);
        let mut progress = tokio::time::interval(STATUS_EVERY);
        let result = loop {
            tokio::select! {
            r = &mut build => break r,
            _ = self.watchdog.due() => self.watchdog.ping(),
            _ = progress.tick() => notify::send(&building_status(kind, started.elapsed())),
            _ = shutdown.recv() => {
                tracing::info!("stopping: cancelling the running build");
                notify::send("STOPPING=1\nSTATUS=stopping");
                cancel.cancel();
                let stopped = tokio::time::timeout(STOP_GRACE, async {
                    let _ = (&mut build).await;
                    cancel.ended().await;
                });
                if stopped.await.is_err() {
                    tracing::warn!(grace = ?STOP_GRACE, "an actor of the build did not stop in time; exiting anyway");
                }
                count_build(kind, BuildResult::Cancelled);
                return Built::Stopped;
            }
            }
        };
        gauge!(telemetry::BUILD_RUNNING).set(0.0);
        record(kind, started.elapsed(), &result);
        crate::sys::release_free_memory();
        match &result {
            Ok(summary) => {
                // From now on, watch exactly what this build read.
                self.watch.set_folders(summary.read_folders.clone());
                self.watch.hold_incomplete(summary.incomplete_inputs.clone());
            }
            Err(e) => {
                if let Some(pipeline::Pending(path)) = e.downcast_ref() {
                    self.watch.hold_incomplete(vec![path.clone()]);
                    // A linker table this build found cut short: build again now that it is
                    // held (edstays' absence only holds back the stay links; the others wait).
                    self.dirty |= !unstable.contains(path);
                }
            }
        }
        Built::Finished
    }

    /// SIGHUP: the config file again. The output cannot change while running, nor the
    /// listener's address (said aloud); a new watcher replaces the old one when its settings
    /// changed (the old one stops when its handle is dropped).
    fn reload(&mut self) {
        let new = match load(self.config_path.as_deref(), &self.overrides) {
            Ok(new) => new,
            Err(e) => {
                counter!(telemetry::RELOADS, "result" => "failed").increment(1);
                tracing::error!(error = %format!("{e:#}"), "reload failed; keeping the running configuration");
                return;
            }
        };
        if new.output != self.config.output {
            counter!(telemetry::RELOADS, "result" => "refused").increment(1);
            tracing::error!("reload refused: the output directory cannot change while running");
            return;
        }
        counter!(telemetry::RELOADS, "result" => "applied").increment(1);
        let changed = changed_settings(&self.config, &new);
        tracing::info!(changed = %if changed.is_empty() { "nothing".to_string() } else { changed.join(", ") }, "configuration reloaded");
        let old = &self.config;
        if new.metrics_addr != old.metrics_addr {
            tracing::error!(running = %old.metrics_addr, configured = %new.metrics_addr,
                "metrics_addr cannot change while running: restart the service to apply it");
        }
        if new.input != old.input
            || new.settle_seconds != old.settle_seconds
            || new.rescan_seconds != old.rescan_seconds
        {
            (self.watch, self.events) = watch::spawn(watch_config(&new), self.trigger.subscribe());
        }
        if new.rescan_seconds != old.rescan_seconds {
            self.next_checkup = next_checkup(&new, Duration::ZERO);
        }
        gauge!(telemetry::SUCCESS_MAX_AGE).set(new.alert_max_age_hours as f64 * 3600.0);
        self.config = pipeline_config_keeping_listener(new, &self.config);
        self.dirty = true;
    }
}

fn watch_config(c: &Config) -> watch::WatchConfig {
    watch::WatchConfig {
        folders: pipeline::read_set::table_folders(c),
        ignore: vec![c.output.clone()],
        settle: Duration::from_secs(c.settle_seconds),
        rescan: Duration::from_secs(c.rescan_seconds.max(1)),
    }
}

/// The output checkup takes at most this share of the time (1/200: 0.5 % of a core): it stats
/// every published file, seconds of CPU for the million files of a `cxr` cohort, which at
/// every `rescan_seconds` would be an idle daemon's main cost.
const CHECKUP_SHARE: u32 = 200;

/// When the next output checkup is due: `rescan_seconds` from now, or later if the last one
/// took long (`took`).
fn next_checkup(config: &Config, took: Duration) -> tokio::time::Instant {
    let every = Duration::from_secs(config.rescan_seconds.max(1));
    tokio::time::Instant::now() + every.max(took.saturating_mul(CHECKUP_SHARE))
}

/// A reloaded config, with the listener's address as it runs (it cannot move while running).
fn pipeline_config_keeping_listener(mut new: Config, running: &Config) -> Config {
    new.metrics_addr = running.metrics_addr;
    new
}

/// Self-repair: the jobs whose published files were removed or changed since they were
/// published are forgotten, so the next build redoes them; returns how many. An output folder
/// that is gone is an error (its lock is checked before, by identity): the daemon must never
/// stay "healthy" on an output that no longer exists.
fn check_output(output: &Path) -> anyhow::Result<usize> {
    anyhow::ensure!(output.is_dir(), "the output folder {} was removed", output.display());
    let damaged = state::damaged_jobs(output);
    for job in &damaged {
        tracing::info!(job, "published files missing or changed: the job is redone");
        state::forget(output, job).with_context(|| format!("forgetting job {job}"))?;
    }
    Ok(damaged.len())
}

/// [`check_output`], then the memory it used handed back: it reads every manifest, and those
/// of a `cxr` cohort's copied folders list hundreds of thousands of files, which an idle daemon
/// would otherwise keep resident.
fn check_output_and_trim(output: &Path) -> anyhow::Result<usize> {
    let checked = check_output(output);
    crate::sys::release_free_memory();
    checked
}

/// The settings that differ between two configs, by their config-file names.
fn changed_settings(old: &Config, new: &Config) -> Vec<String> {
    let (Ok(serde_json::Value::Object(old)), Ok(serde_json::Value::Object(new))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return vec!["(could not compare)".to_string()];
    };
    new.iter().filter(|(k, v)| old.get(*k) != Some(v)).map(|(k, _)| k.clone()).collect()
}

fn spawn_signal_handler(trigger: ShutdownTrigger, reload: async_channel::Sender<()>) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM"); trigger.trigger(); }
                _ = int.recv() => { tracing::info!("SIGINT"); trigger.trigger(); }
                _ = hup.recv() => { tracing::info!("SIGHUP: reloading the configuration"); let _ = reload.try_send(()); }
            }
        }
    });
    Ok(())
}
