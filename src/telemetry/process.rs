//! The process's own metrics, sampled when scraped: under our names and the standard ones.

use metrics::{counter, gauge};

const RESIDENT_MEMORY: &str = "mimic_eye_process_resident_memory_bytes";
const CPU_SECONDS: &str = "mimic_eye_process_cpu_seconds_total";
// The standard process metrics, named as Prometheus' client libraries name them.
const PROCESS_RESIDENT: &str = "process_resident_memory_bytes";
const PROCESS_CPU: &str = "process_cpu_seconds_total";
const PROCESS_START: &str = "process_start_time_seconds";
const PROCESS_OPEN_FDS: &str = "process_open_fds";
const PROCESS_MAX_FDS: &str = "process_max_fds";

/// Describes the process metrics and sets the start time.
pub(crate) fn describe() {
    use metrics::{describe_counter, describe_gauge, Unit};
    describe_gauge!(PROCESS_RESIDENT, Unit::Bytes, "Resident memory size in bytes");
    describe_counter!(PROCESS_CPU, Unit::Seconds, "Total user and system CPU time spent in seconds");
    describe_gauge!(PROCESS_START, Unit::Seconds, "Start time of the process since unix epoch in seconds");
    describe_gauge!(PROCESS_OPEN_FDS, "Number of open file descriptors");
    describe_gauge!(PROCESS_MAX_FDS, "Maximum number of open file descriptors");
    describe_gauge!(RESIDENT_MEMORY, Unit::Bytes, "Resident memory of the process");
    describe_counter!(CPU_SECONDS, Unit::Seconds, "CPU time used by the process");
    gauge!(PROCESS_START).set(crate::version::started_unix());
}

/// Samples process memory, CPU and descriptors into gauges, under our names and the standard
/// ones.
pub(crate) fn sample_process() {
    if let Ok(s) = std::fs::read_to_string("/proc/self/statm") {
        if let Some(rss_pages) = s.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()) {
            let page = crate::sys::page_size_and_clock_ticks().0 as f64;
            gauge!(RESIDENT_MEMORY).set(rss_pages * page);
            gauge!(PROCESS_RESIDENT).set(rss_pages * page);
        }
    }
    if let Ok(s) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name: utime and stime are the 12th and 13th.
        if let Some(rest) = s.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            if let (Some(u), Some(st)) =
                (f.get(11).and_then(|v| v.parse::<u64>().ok()), f.get(12).and_then(|v| v.parse::<u64>().ok()))
            {
                let hz = crate::sys::page_size_and_clock_ticks().1;
                counter!(CPU_SECONDS).absolute((u + st) / hz);
                counter!(PROCESS_CPU).absolute((u + st) / hz);
            }
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        gauge!(PROCESS_OPEN_FDS).set(fds.count() as f64);
    }
    gauge!(PROCESS_MAX_FDS).set(crate::sys::open_files_limit() as f64);
}
