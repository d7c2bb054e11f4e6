//! The connections: `connections` threads, each with a keep-alive connection from one agent,
//! take files from a bounded queue (a producer reads the listing beside them: a million-line
//! listing is never held). Progress is one bar on a terminal, a line every few seconds
//! elsewhere. A refusal of the credentials stops every thread.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::download::{self, FetchError, Task, Tuning};
use crate::fetched::Verified;

/// Hands tasks to its argument until it returns false; reads a listing, or a list.
pub(crate) type Producer<'a> = Box<dyn FnOnce(&mut dyn FnMut(Task) -> bool) -> std::io::Result<()> + Send + 'a>;

/// What a fetch did, for its closing summary.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Totals {
    /// Files downloaded, and their bytes (resumed parts included).
    pub fetched: u64,
    /// Bytes received.
    pub fetched_bytes: u64,
    /// In place already, verified (by the record or by hashing once).
    pub skipped: u64,
    /// Tries after the first, over all files.
    pub retried: u64,
    /// Files continued with a `Range` request.
    pub resumed: u64,
    /// Fetched or kept without a listed digest (MIMIC-CXR's reports).
    pub unverified: u64,
    /// Files that could not be fetched (named in the log).
    pub failed: u64,
    /// Unlisted files the server does not have (a study without a report): not failures.
    pub absent: u64,
    /// How long it took.
    pub seconds: f64,
    /// With `--dry-run` or `--list`: the files and bytes of the plan.
    pub planned_files: u64,
    /// The bytes of the plan, as the server gives them.
    pub planned_bytes: u64,
    /// The first failure's message.
    #[serde(skip)]
    pub first_error: Option<String>,
}

impl Totals {
    pub(crate) fn add(&mut self, other: &Totals) {
        self.fetched += other.fetched;
        self.fetched_bytes += other.fetched_bytes;
        self.skipped += other.skipped;
        self.retried += other.retried;
        self.resumed += other.resumed;
        self.unverified += other.unverified;
        self.failed += other.failed;
        self.absent += other.absent;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }

    /// The closing summary line.
    pub fn text(&self) -> String {
        format!(
            "fetched {} file(s), {} bytes; skipped {} already verified; retried {}, resumed {}; unverified {}; not on the server {}; failed {}; {:.1} s",
            self.fetched,
            self.fetched_bytes,
            self.skipped,
            self.retried,
            self.resumed,
            self.unverified,
            self.absent,
            self.failed,
            self.seconds
        )
    }
}

/// The HTTP side of a fetch.
pub(crate) struct Pool {
    agent: ureq::Agent,
    auth: Option<String>,
    connections: usize,
    tuning: Tuning,
}

impl Pool {
    pub(crate) fn new(connections: usize, auth: Option<String>) -> anyhow::Result<Self> {
        if connections == 0 || connections > 64 {
            bail!("--connections must be between 1 and 64");
        }
        let tls = ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::PlatformVerifier).build();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .tls_config(tls)
            .max_idle_connections(connections * 2)
            .max_idle_connections_per_host(connections * 2)
            .timeout_connect(Some(Duration::from_secs(30)))
            .user_agent(concat!("mimic-eye/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Ok(Self { agent, auth, connections, tuning: Tuning::from_env() })
    }

    /// A small text (an index page); `None` for a 404. A refusal of the credentials is an error.
    pub(crate) fn get_text(&self, url: &str) -> anyhow::Result<Option<String>> {
        let mut request = self.agent.get(url);
        if let Some(auth) = &self.auth {
            request = request.header("Authorization", auth);
        }
        let mut response = request.call().map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
        match response.status().as_u16() {
            200 => Ok(Some(response.body_mut().read_to_string().map_err(|e| anyhow::anyhow!("{url}: {e}"))?)),
            404 => Ok(None),
            code @ (401 | 403) => Err(FetchError::Refused { url: url.to_string(), code }.into()),
            code => bail!("{url}: HTTP {code}"),
        }
    }

    /// Fetches `tasks`.
    pub(crate) fn run(&self, what: &str, tasks: Vec<Task>, verified: &Verified) -> anyhow::Result<Totals> {
        if tasks.is_empty() {
            return Ok(Totals::default());
        }
        let count = tasks.len() as u64;
        self.run_streamed(
            what,
            count,
            Box::new(move |each: &mut dyn FnMut(Task) -> bool| {
                for task in tasks {
                    if !each(task) {
                        break;
                    }
                }
                Ok(())
            }),
            verified,
        )
    }

    /// Fetches what `produce` hands out (`count` files), `connections` files at a time.
    pub(crate) fn run_streamed(
        &self,
        what: &str,
        count: u64,
        produce: Producer<'_>,
        verified: &Verified,
    ) -> anyhow::Result<Totals> {
        let (tx, rx) = async_channel::bounded::<Task>(self.connections * 4);
        let (totals, refused) = (Mutex::new(Totals::default()), Mutex::new(None::<FetchError>));
        let (stop, bytes) = (AtomicBool::new(false), AtomicU64::new(0));
        let progress = Progress::new(count, &bytes);
        let finished = AtomicBool::new(false);
        let (produced, panicked) = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..self.connections)
                .map(|_| {
                    let rx = rx.clone();
                    let (totals, refused, stop, bytes, progress) = (&totals, &refused, &stop, &bytes, &progress);
                    scope.spawn(move || {
                        while let Ok(task) = rx.recv_blocking() {
                            if stop.load(Ordering::Relaxed) {
                                continue;
                            }
                            let started = Instant::now();
                            let outcome = self.one(&task, verified, bytes);
                            progress.file_done(&outcome, started.elapsed());
                            let mut t = totals.lock().unwrap_or_else(|e| e.into_inner());
                            match outcome {
                                Ok(done) => t.add(&done),
                                Err(e @ FetchError::Refused { .. }) => {
                                    stop.store(true, Ordering::Relaxed);
                                    *refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                                }
                                Err(e) => {
                                    tracing::error!(error = %e, "file not fetched");
                                    t.failed += 1;
                                    t.first_error.get_or_insert_with(|| e.to_string());
                                }
                            }
                        }
                    })
                })
                .collect();
            drop(rx);
            let reporter = scope.spawn(|| progress.report(what, &finished, self.connections));
            let produced = produce(&mut |task| !stop.load(Ordering::Relaxed) && tx.send_blocking(task).is_ok());
            tx.close();
            let panicked = workers.into_iter().map(|w| w.join()).filter(Result::is_err).count();
            finished.store(true, Ordering::Relaxed);
            let _ = reporter.join();
            (produced, panicked)
        });
        produced?;
        if panicked > 0 {
            bail!("{panicked} download thread(s) panicked (a bug): the fetch is incomplete");
        }
        if let Some(e) = refused.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(e.into());
        }
        Ok(totals.into_inner().unwrap_or_else(|e| e.into_inner()))
    }

    /// One file: skipped when it is in place and verified, else fetched and recorded.
    fn one(&self, task: &Task, verified: &Verified, bytes: &AtomicU64) -> Result<Totals, FetchError> {
        let mut t = Totals::default();
        verified.plan(&task.dest);
        match &task.expected {
            Some(expected) if verified.holds(&task.dest, expected) => {
                t.skipped = 1;
                return Ok(t);
            }
            None if task.dest.is_file() => {
                (t.skipped, t.unverified) = (1, 1);
                return Ok(t);
            }
            _ => {}
        }
        let done = match download::fetch(&self.agent, self.auth.as_deref(), task, &self.tuning, bytes) {
            // A file no listing names may simply not exist (MIMIC-CXR has no report for some
            // studies): the build passes over it too.
            Err(FetchError::Status { code: 404, .. }) if task.expected.is_none() => {
                t.absent = 1;
                return Ok(t);
            }
            other => other?,
        };
        (t.fetched, t.fetched_bytes, t.retried, t.resumed) =
            (1, done.bytes, u64::from(done.retries), u64::from(done.resumed));
        match (task.expected.is_some(), done.digest) {
            (true, Some(d)) => verified.record(&task.dest, &d),
            _ => t.unverified = 1,
        }
        Ok(t)
    }

    /// The sum of the sizes the server gives for `tasks` (HEAD requests, `connections` at once;
    /// a file in place counts its size on disk).
    pub(crate) fn sizes(&self, tasks: &[Task]) -> anyhow::Result<u64> {
        let total = AtomicU64::new(0);
        let next = AtomicU64::new(0);
        std::thread::scope(|scope| {
            for _ in 0..self.connections {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(task) = tasks.get(i) else { return };
                    let size = match std::fs::metadata(&task.dest) {
                        Ok(m) => Some(m.len()),
                        Err(_) => self.head_size(&task.url),
                    };
                    total.fetch_add(size.unwrap_or(0), Ordering::Relaxed);
                });
            }
        });
        Ok(total.into_inner())
    }

    fn head_size(&self, url: &str) -> Option<u64> {
        let mut request = self.agent.head(url);
        if let Some(auth) = &self.auth {
            request = request.header("Authorization", auth);
        }
        let response = request.call().ok()?;
        response.headers().get("content-length")?.to_str().ok()?.parse().ok()
    }
}

/// What one run has done, for its progress line: files done of `count`, and the time the
/// downloaded ones took (files already in place are instant and must not shorten the ETA).
struct Progress<'a> {
    count: u64,
    bytes: &'a AtomicU64,
    done: AtomicU64,
    downloaded: AtomicU64,
    download_micros: AtomicU64,
}

impl<'a> Progress<'a> {
    fn new(count: u64, bytes: &'a AtomicU64) -> Self {
        let zero = || AtomicU64::new(0);
        Self { count, bytes, done: zero(), downloaded: zero(), download_micros: zero() }
    }

    fn file_done(&self, outcome: &Result<Totals, FetchError>, took: Duration) {
        self.done.fetch_add(1, Ordering::Relaxed);
        if matches!(outcome, Ok(t) if t.fetched > 0) {
            self.downloaded.fetch_add(1, Ordering::Relaxed);
            self.download_micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        }
    }

    /// The line: files done of all, bytes, rate and the time left.
    fn line(&self, connections: usize, elapsed: Duration) -> String {
        let (b, done) = (self.bytes.load(Ordering::Relaxed), self.done.load(Ordering::Relaxed));
        let rate = b as f64 / elapsed.as_secs_f64().max(0.001) / 1e6;
        format!(
            "{done}/{} file(s), {:.1} MB, {rate:.2} MB/s, {}",
            self.count,
            b as f64 / 1e6,
            self.eta(connections).map_or_else(|| "ETA unknown".to_string(), |s| format!("ETA {}", clock(s)))
        )
    }

    /// Seconds left: the files not yet done, at the mean time a download took, shared by
    /// the connections. A mean over the whole run does not jump with one slow file.
    fn eta(&self, connections: usize) -> Option<u64> {
        let downloaded = self.downloaded.load(Ordering::Relaxed);
        if downloaded == 0 {
            return None;
        }
        let left = self.count.saturating_sub(self.done.load(Ordering::Relaxed));
        let mean = self.download_micros.load(Ordering::Relaxed) as f64 / downloaded as f64 / 1e6;
        Some((left as f64 * mean / connections as f64).ceil() as u64)
    }

    /// Until `stop`: one bar on a terminal, else a line every five seconds.
    fn report(&self, what: &str, stop: &AtomicBool, connections: usize) {
        let started = Instant::now();
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(self.count);
            let style = indicatif::ProgressStyle::with_template("{prefix:>14} [{bar:30}] {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(what.to_string());
            bar
        });
        let mut last_line = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
            match &bar {
                Some(bar) => {
                    bar.set_position(self.done.load(Ordering::Relaxed));
                    bar.set_message(self.line(connections, started.elapsed()));
                }
                None if last_line.elapsed() >= Duration::from_secs(5) => {
                    eprintln!("fetch {what}: {}", self.line(connections, started.elapsed()));
                    last_line = Instant::now();
                }
                None => {}
            }
        }
        if let Some(bar) = bar {
            bar.set_position(self.done.load(Ordering::Relaxed));
            bar.finish_with_message(self.line(connections, started.elapsed()));
        }
    }
}

/// `1h02m03s`, `4m05s`, `6s`.
fn clock(seconds: u64) -> String {
    match (seconds / 3600, seconds / 60 % 60, seconds % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, s) => format!("{h}h{m:02}m{s:02}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eta_counts_only_downloads_and_shares_them_among_connections() {
        let bytes = AtomicU64::new(0);
        let p = Progress::new(10, &bytes);
        assert_eq!(p.eta(2), None, "nothing downloaded yet: no guess");
        let skipped = Ok(Totals { skipped: 1, ..Default::default() });
        let fetched = Ok(Totals { fetched: 1, ..Default::default() });
        p.file_done(&skipped, Duration::from_millis(1));
        p.file_done(&fetched, Duration::from_secs(4));
        p.file_done(&fetched, Duration::from_secs(2));
        // 7 left at 3 s each over 2 connections.
        assert_eq!(p.eta(2), Some(11));
        assert_eq!(clock(11), "11s");
        assert_eq!(clock(3723), "1h02m03s");
        assert!(p.line(2, Duration::from_secs(1)).starts_with("3/10 file(s)"));
    }
}
