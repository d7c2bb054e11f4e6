//! Progress bars on a terminal (per table: input bytes read of total); silent otherwise.

use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Progress bars on a terminal, nothing elsewhere (CI and the daemon have none).
#[derive(Clone)]
pub struct ProgressBars {
    multi: Option<MultiProgress>,
}

impl ProgressBars {
    /// Bars when stderr is a terminal; hidden otherwise (CI, journald, tests).
    pub fn on_terminal() -> Self {
        let multi =
            std::io::stderr().is_terminal().then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Self { multi }
    }

    pub(crate) fn hidden() -> Self {
        Self { multi: None }
    }

    /// A bar for one table, sized by its file's bytes.
    pub fn table(&self, name: &str, total_bytes: u64) -> ProgressBar {
        let Some(multi) = &self.multi else {
            return ProgressBar::hidden();
        };
        let bar = multi.add(ProgressBar::new(total_bytes));
        let style = ProgressStyle::with_template("{prefix:>28} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(name.to_string());
        bar
    }
}
