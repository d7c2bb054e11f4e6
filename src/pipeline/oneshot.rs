//! A one-shot build that a signal stops cleanly, saying what it kept.

use std::path::Path;

use anyhow::Context;

use crate::config::Config;
use crate::pipeline::build::{build, BuildOptions, Cancelled};
use crate::pipeline::state;
use crate::pipeline::summary::Summary;
use crate::progress::ProgressBars;

/// What a one-shot build stopped by Ctrl-C (SIGINT) or SIGTERM left: nothing half-written is
/// visible, the tables finished before the stop are published, the others keep their previous
/// output.
#[derive(Debug, thiserror::Error)]
#[error(
    "stopped by a signal: {published} table(s) finished and published before the stop are kept; every other table keeps its previous output, and nothing half-written is visible. The same command finishes the rest (only what is left is redone)"
)]
pub struct Interrupted {
    /// Jobs published by this build before the stop.
    pub published: usize,
}

/// A one-shot build that Ctrl-C or SIGTERM stops cleanly (see [`Interrupted`]).
pub async fn build_until_interrupted(
    config: Config,
    progress: ProgressBars,
    mut options: BuildOptions,
) -> anyhow::Result<Summary> {
    use tokio::signal::unix::{signal, SignalKind};
    let since = std::time::SystemTime::now();
    let output = config.output.clone();
    let (owner, token) = crate::shutdown::cancel_pair();
    options.cancel = token;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut running = std::pin::pin!(build(config, progress, options));
    tokio::select! {
        result = &mut running => result,
        _ = async { tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} } } => {
            owner.cancel();
            match running.await {
                Err(e) if e.is::<Cancelled>() => Err(Interrupted { published: state::published_since(Path::new(&output), since) }.into()),
                other => other,
            }
        }
    }
}
