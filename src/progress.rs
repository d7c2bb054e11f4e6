//! A build's progress for a person. On a terminal: one overall bar (tables done of all, bytes,
//! rate, ETA) and a bar per table in flight, removed when it ends; log lines are printed
//! between redraws, never through a bar ([`LogWriter`]). Off a terminal (nohup, tee, Slurm): a
//! line every few seconds. The daemon has neither (it has `/status` and systemd's STATUS).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a progress line is printed off a terminal (`MIMIC_EYE_PROGRESS_SECONDS` sets
/// another interval).
fn line_every() -> Duration {
    let seconds = std::env::var("MIMIC_EYE_PROGRESS_SECONDS").ok().and_then(|s| s.parse::<f64>().ok());
    seconds.filter(|s| s.is_finite() && *s > 0.0).map_or(Duration::from_secs(5), Duration::from_secs_f64)
}

/// The bars of the process, once shown: the log writer prints around them.
static BARS: OnceLock<MultiProgress> = OnceLock::new();

/// A build's progress (cheap to clone: one shared state).
#[derive(Clone)]
pub struct ProgressBars {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    /// The bars on a terminal; `None` prints lines instead.
    multi: Option<MultiProgress>,
    overall: ProgressBar,
    started: Instant,
    tables_total: AtomicU64,
    tables_done: AtomicU64,
    bytes_total: AtomicU64,
    /// Bytes of the tables done, and of those in flight as last reported.
    bytes_done: AtomicU64,
    finished: AtomicBool,
}

impl ProgressBars {
    /// Bars when stderr is a terminal, a line every few seconds otherwise.
    pub fn on_terminal() -> Self {
        let multi = std::io::stderr().is_terminal().then(|| {
            let multi = BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
            multi.clone()
        });
        let overall = match &multi {
            Some(m) => {
                // Empty until the tables are known.
                let bar = m.add(ProgressBar::new(1));
                let style = ProgressStyle::with_template("{prefix:>12} [{bar:30}] {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> ");
                bar.set_style(style);
                bar.set_prefix("build");
                bar
            }
            None => ProgressBar::hidden(),
        };
        let inner = Arc::new(Inner {
            multi,
            overall,
            started: Instant::now(),
            tables_total: AtomicU64::new(0),
            tables_done: AtomicU64::new(0),
            bytes_total: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            finished: AtomicBool::new(false),
        });
        // The ticker holds the state weakly: it ends with the build's last handle.
        let ticker = Arc::downgrade(&inner);
        std::thread::spawn(move || Inner::tick_until_finished(&ticker));
        Self { inner: Some(inner) }
    }

    /// Nothing shown (the daemon, tests of the library).
    pub fn hidden() -> Self {
        Self { inner: None }
    }

    /// The work ahead: `tables` table jobs reading `bytes` of input.
    pub(crate) fn begin(&self, tables: usize, bytes: u64) {
        if let Some(i) = &self.inner {
            i.tables_total.store(tables as u64, Ordering::Relaxed);
            i.bytes_total.store(bytes, Ordering::Relaxed);
            i.overall.set_length(bytes);
        }
    }

    /// A table found unchanged: done without reading its `bytes`.
    pub(crate) fn unchanged(&self, bytes: u64) {
        if let Some(i) = &self.inner {
            i.tables_done.fetch_add(1, Ordering::Relaxed);
            i.bytes_total.fetch_sub(bytes.min(i.bytes_total.load(Ordering::Relaxed)), Ordering::Relaxed);
            i.overall.set_length(i.bytes_total.load(Ordering::Relaxed));
        }
    }

    /// A bar for one table in flight, sized by its file's bytes; gone when dropped.
    pub(crate) fn table(&self, name: &str, total_bytes: u64) -> TableBar {
        let Some(inner) = &self.inner else {
            return TableBar { bar: ProgressBar::hidden(), inner: None, total: total_bytes, reported: 0 };
        };
        let bar = match &inner.multi {
            Some(multi) => {
                let bar = multi.add(ProgressBar::new(total_bytes));
                let style =
                    ProgressStyle::with_template("{prefix:>28} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> ");
                bar.set_style(style);
                bar.set_prefix(name.to_string());
                bar
            }
            None => ProgressBar::hidden(),
        };
        TableBar { bar, inner: Some(Arc::clone(inner)), total: total_bytes, reported: 0 }
    }

    /// The build ended: the overall bar stays with its last line, the ticker stops.
    pub(crate) fn finish(&self) {
        if let Some(i) = &self.inner {
            i.finished.store(true, Ordering::Relaxed);
            i.overall.set_position(i.bytes_done.load(Ordering::Relaxed));
            i.overall.finish_with_message(i.line());
        }
    }
}

impl Inner {
    /// `12/32 tables, 1.20 GiB of 3.40 GiB, 45.1 MB/s, ETA 1m10s`.
    fn line(&self) -> String {
        let (done, total) = (self.bytes_done.load(Ordering::Relaxed), self.bytes_total.load(Ordering::Relaxed));
        let elapsed = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / elapsed;
        let eta = match rate > 0.0 && total > done {
            true => format!("ETA {}", clock(((total - done) as f64 / rate).ceil() as u64)),
            false if total > 0 && done >= total => "ETA 0s".to_string(),
            false => "ETA unknown".to_string(),
        };
        format!(
            "{}/{} tables, {} of {}, {:.1} MB/s, {eta}",
            self.tables_done.load(Ordering::Relaxed),
            self.tables_total.load(Ordering::Relaxed),
            indicatif::HumanBytes(done),
            indicatif::HumanBytes(total),
            rate / 1e6
        )
    }

    /// The overall bar redrawn, or a line printed every [`line_every`], until the build ends.
    fn tick_until_finished(weak: &std::sync::Weak<Inner>) {
        let (mut last_line, every) = (Instant::now(), line_every());
        loop {
            std::thread::sleep(every.min(Duration::from_millis(200)));
            let Some(this) = weak.upgrade() else { return };
            if this.finished.load(Ordering::Relaxed) {
                return;
            }
            if this.multi.is_some() {
                this.overall.set_position(this.bytes_done.load(Ordering::Relaxed));
                this.overall.set_message(this.line());
            } else if last_line.elapsed() >= every && this.tables_total.load(Ordering::Relaxed) > 0 {
                let _ = writeln!(std::io::stderr(), "progress: {}", this.line());
                last_line = Instant::now();
            }
        }
    }
}

/// One table's bar: its position is the bytes read; dropping it counts the table done.
pub(crate) struct TableBar {
    bar: ProgressBar,
    inner: Option<Arc<Inner>>,
    total: u64,
    /// What was last added to the overall bytes.
    reported: u64,
}

impl TableBar {
    pub(crate) fn set_position(&mut self, bytes: u64) {
        self.bar.set_position(bytes);
        if let Some(i) = &self.inner {
            let bytes = bytes.min(self.total);
            i.bytes_done.fetch_add(bytes.saturating_sub(self.reported), Ordering::Relaxed);
            self.reported = self.reported.max(bytes);
        }
    }
}

impl Drop for TableBar {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
        if let Some(i) = &self.inner {
            // A table ends at its full size, however much of it the last tick saw.
            i.bytes_done.fetch_add(self.total.saturating_sub(self.reported), Ordering::Relaxed);
            i.tables_done.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A long check's progress (`verify`, `inputs --verify`): files done of all, bytes, rate and
/// ETA; a bar on a terminal, a line every few seconds elsewhere, until dropped.
pub(crate) struct FileProgress {
    state: Arc<FileState>,
}

struct FileState {
    what: String,
    total: u64,
    done: AtomicU64,
    bytes: AtomicU64,
    started: Instant,
    finished: AtomicBool,
}

impl FileState {
    /// `120/160 files, 1.20 GiB, 900.0 MB/s, ETA 2s`.
    fn line(&self) -> String {
        let (done, bytes) = (self.done.load(Ordering::Relaxed), self.bytes.load(Ordering::Relaxed));
        let elapsed = self.started.elapsed().as_secs_f64().max(0.001);
        let eta = match done {
            0 => "ETA unknown".to_string(),
            d => format!("ETA {}", clock((elapsed / d as f64 * self.total.saturating_sub(d) as f64).ceil() as u64)),
        };
        format!(
            "{done}/{} files, {}, {:.1} MB/s, {eta}",
            self.total,
            indicatif::HumanBytes(bytes),
            bytes as f64 / elapsed / 1e6
        )
    }
}

impl FileProgress {
    pub(crate) fn start(what: &str, total_files: u64) -> Self {
        let state = Arc::new(FileState {
            what: what.to_string(),
            total: total_files,
            done: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            started: Instant::now(),
            finished: AtomicBool::new(false),
        });
        let ticker = Arc::clone(&state);
        std::thread::spawn(move || {
            let bar = std::io::stderr().is_terminal().then(|| {
                let multi = BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
                let bar = multi.add(ProgressBar::new(ticker.total));
                let style = ProgressStyle::with_template("{prefix:>12} [{bar:30}] {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> ");
                bar.set_style(style);
                bar.set_prefix(ticker.what.clone());
                bar
            });
            let (mut last_line, every) = (Instant::now(), line_every());
            while !ticker.finished.load(Ordering::Relaxed) {
                std::thread::sleep(every.min(Duration::from_millis(200)));
                match &bar {
                    Some(bar) => {
                        bar.set_position(ticker.done.load(Ordering::Relaxed));
                        bar.set_message(ticker.line());
                    }
                    None if last_line.elapsed() >= every => {
                        let _ = writeln!(std::io::stderr(), "{}: {}", ticker.what, ticker.line());
                        last_line = Instant::now();
                    }
                    None => {}
                }
            }
            if let Some(bar) = bar {
                bar.set_position(ticker.done.load(Ordering::Relaxed));
                bar.finish_with_message(ticker.line());
            }
        });
        Self { state }
    }

    /// One file checked, of `bytes`.
    pub(crate) fn file_done(&self, bytes: u64) {
        self.state.done.fetch_add(1, Ordering::Relaxed);
        self.state.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

impl Drop for FileProgress {
    fn drop(&mut self) {
        self.state.finished.store(true, Ordering::Relaxed);
    }
}

/// `1h02m03s`, `4m05s`, `6s`.
pub(crate) fn clock(seconds: u64) -> String {
    match (seconds / 3600, seconds / 60 % 60, seconds % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, s) => format!("{h}h{m:02}m{s:02}s"),
    }
}

/// Log output to stderr that never tears a bar: while bars are shown, each line is written
/// between two redraws.
#[derive(Clone, Copy, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match BARS.get() {
            Some(multi) => multi.suspend(|| std::io::stderr().write_all(buf)).map(|()| buf.len()),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LogWriter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overall_line_counts_tables_and_bytes_and_unchanged_tables_leave_the_total() {
        let p = ProgressBars::on_terminal();
        p.begin(3, 3_000_000_000);
        p.unchanged(1_000_000_000);
        {
            let mut t = p.table("hosp/labevents", 1_500_000_000);
            t.set_position(500_000_000);
            t.set_position(400_000_000); // never backwards
            let line = p.inner.as_ref().unwrap().line();
            assert!(line.starts_with("1/3 tables, 476.84 MiB of 1.86 GiB, "), "{line}");
        }
        let line = p.inner.as_ref().unwrap().line();
        assert!(line.starts_with("2/3 tables, 1.40 GiB of 1.86 GiB, "), "{line}");
        assert!(line.contains("ETA ") && !line.contains("unknown"), "{line}");
        p.finish();
        assert_eq!(clock(3723), "1h02m03s");
        assert_eq!(clock(65), "1m05s");
    }
}
