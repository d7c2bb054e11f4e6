//! What a finished build tells the world: the builds counter and duration, the gauges of the
//! output, the log line, systemd's STATUS and `/status`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use metrics::{counter, gauge, histogram};

use super::notify;
use crate::pipeline::{self, Cancelled};
use crate::telemetry::{self, BuildKind, BuildResult, LastResult, Phase};

pub(super) fn count_build(kind: BuildKind, result: BuildResult) {
    counter!(telemetry::BUILDS, "kind" => kind.label(), "result" => result.label()).increment(1);
}

pub(super) fn record(kind: BuildKind, elapsed: Duration, result: &anyhow::Result<pipeline::Summary>) {
    histogram!(telemetry::BUILD_DURATION, "kind" => kind.label()).record(elapsed.as_secs_f64());
    match result {
        Ok(summary) => {
            let outcome = if summary.failed.is_empty() { BuildResult::Success } else { BuildResult::Failure };
            count_build(kind, outcome);
            gauge!(telemetry::COHORT_PATIENTS).set(summary.patients as f64);
            gauge!(telemetry::LINKED_IMAGES).set(summary.linked_images as f64);
            gauge!(telemetry::IMAGES).set(summary.images as f64);
            gauge!(telemetry::STAYS).set(summary.stays as f64);
            gauge!(telemetry::TABLES_FAILED).set(summary.failed.len() as f64);
            let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
            if summary.failed.is_empty() {
                gauge!(telemetry::LAST_SUCCESS).set(now as f64);
            } else {
                for (table, error) in &summary.failed {
                    tracing::error!(table, error, "table failed; its previous output is kept");
                }
            }
            tracing::info!(
                kind = kind.label(),
                seconds = elapsed.as_secs_f64(),
                failed = summary.failed.len(),
                "build finished: {}",
                summary.headline()
            );
            notify::send(&format!("STATUS=idle: {}", summary.headline()));
            summary.export_gauges();
            *crate::pipeline::report::last_summary().lock().unwrap_or_else(|e| e.into_inner()) =
                Some(Arc::new(summary.clone()));
            telemetry::update_status(|s| {
                s.phase = Phase::Idle;
                s.tables.clear();
                s.last_result = Some(LastResult { result: outcome, detail: None });
                s.failed_tables = summary.failed.iter().map(|(t, e)| (t.clone(), telemetry::bounded_text(e))).collect();
                if summary.failed.is_empty() {
                    s.last_success_unix = Some(now);
                }
                s.headline = Some(summary.headline());
            });
        }
        Err(e) if e.is::<pipeline::Pending>() => {
            // A download in progress is not a failure: no alert fires for it.
            count_build(kind, BuildResult::Pending);
            tracing::info!(reason = %e, "build waiting for an input to be complete");
            notify::send(&format!("STATUS=waiting: {}", telemetry::bounded_text(&e.to_string())));
            telemetry::update_status(|s| {
                s.phase = Phase::Waiting;
                s.tables.clear();
                let detail = Some(telemetry::bounded_text(&e.to_string()));
                s.last_result = Some(LastResult { result: BuildResult::Pending, detail });
            });
        }
        Err(e) => {
            let outcome = if e.is::<Cancelled>() { BuildResult::Cancelled } else { BuildResult::Failure };
            count_build(kind, outcome);
            let error = telemetry::bounded_text(&format!("{e:#}"));
            tracing::error!(error, "build failed; waiting for the input to change");
            notify::send(&format!(
                "STATUS=build failed: {}",
                telemetry::bounded_text(&e.to_string()).replace('\n', " ")
            ));
            telemetry::update_status(|s| {
                s.phase = Phase::Idle;
                s.tables.clear();
                s.last_result = Some(LastResult { result: outcome, detail: Some(error) });
            });
        }
    }
}

/// How often `systemctl status` is told a build's progress.
pub(super) const STATUS_EVERY: Duration = Duration::from_secs(5);

/// `STATUS=building (full) for 42 s: 2 table(s) reading, 1.2 of 3.4 GB (35 %)`.
pub(super) fn building_status(kind: BuildKind, elapsed: Duration) -> String {
    let tables = telemetry::status().lock().map(|s| s.tables.clone()).unwrap_or_default();
    let (done, total) = tables.values().fold((0, 0), |(d, t), p| (d + p.bytes_done, t + p.bytes_total));
    let mut text = format!("STATUS=building ({}) for {} s", kind.label(), elapsed.as_secs());
    if total > 0 {
        text.push_str(&format!(
            ": {} table(s) reading, {:.1} of {:.1} GB ({} %)",
            tables.len(),
            done as f64 / 1e9,
            total as f64 / 1e9,
            done * 100 / total
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_is_told_the_bytes_read_of_the_tables_in_flight() {
        let quiet = building_status(BuildKind::Full, Duration::from_secs(3));
        assert!(quiet.starts_with("STATUS=building (full) for 3 s"), "{quiet}");
        telemetry::update_status(|s| {
            s.tables.insert(
                "hosp/labevents".into(),
                telemetry::Progress { bytes_done: 1_000_000_000, bytes_total: 3_000_000_000 },
            );
            s.tables.insert(
                "icu/chartevents".into(),
                telemetry::Progress { bytes_done: 500_000_000, bytes_total: 1_000_000_000 },
            );
        });
        let text = building_status(BuildKind::Incremental, Duration::from_secs(42));
        telemetry::update_status(|s| s.tables.clear());
        assert_eq!(text, "STATUS=building (incremental) for 42 s: 2 table(s) reading, 1.5 of 4.0 GB (37 %)");
    }
}
