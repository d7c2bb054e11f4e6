//! One file from PhysioNet, the way a good citizen fetches it: written to a temporary name
//! beside its place (`.NAME.part`), hashed while it streams, checked against its
//! `SHA256SUMS.txt` line and only then renamed into place, so a daemon watching the folder
//! never sees a partial file. An interrupted file resumes with a `Range` request. Transient
//! failures (a reset connection, a stalled transfer, 429, 5xx) are retried with exponential
//! backoff and jitter, honouring `Retry-After`; a 401 or 403 ends the whole fetch.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::sums::Digest;

/// Tries per file before it counts as failed.
const MAX_TRIES: u32 = 8;
/// Bytes read per call: a file of any size streams through one buffer.
const BUFFER: usize = 256 << 10;

/// How the downloads behave (the tests shorten the waits).
#[derive(Debug, Clone)]
pub(crate) struct Tuning {
    /// The first retry waits about this long; each next one twice as long (plus jitter).
    pub backoff: Duration,
    /// The longest wait between tries, `Retry-After` included.
    pub max_backoff: Duration,
    /// A transfer that receives nothing for this long is dropped and resumed.
    pub stall: Duration,
}

impl Tuning {
    /// The defaults, or what `MIMIC_EYE_FETCH_BACKOFF_MS` and `MIMIC_EYE_FETCH_STALL_SECONDS`
    /// say (the tests' fault server answers in milliseconds).
    pub(crate) fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
        Self {
            backoff: Duration::from_millis(var("MIMIC_EYE_FETCH_BACKOFF_MS").unwrap_or(1000)),
            max_backoff: Duration::from_secs(120),
            stall: Duration::from_secs(var("MIMIC_EYE_FETCH_STALL_SECONDS").unwrap_or(60)),
        }
    }
}

/// A file to fetch: its URL, its place, and its listed digest (none for a file that
/// `SHA256SUMS.txt` does not list: fetched unverified).
#[derive(Debug, Clone)]
pub(crate) struct Task {
    pub url: String,
    pub dest: PathBuf,
    pub expected: Option<Digest>,
}

/// What fetching one file did.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Fetched {
    pub bytes: u64,
    pub retries: u32,
    pub resumed: bool,
    pub digest: Option<Digest>,
}

/// Why a file could not be fetched.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    /// PhysioNet refused the credentials: nothing else will work either.
    #[error("{url}: HTTP {code}: PhysioNet refused the credentials. Check the user name and password (in ~/.netrc, or --user) and that this account has signed the data use agreement of the dataset")]
    Refused { url: String, code: u16 },
    #[error("{url}: HTTP {code}")]
    Status { url: String, code: u16 },
    #[error("{}: the bytes received differ from SHA256SUMS.txt after {tries} tries", path.display())]
    Mismatch { path: PathBuf, tries: u32 },
    #[error("{url}: {cause} (after {tries} tries)")]
    GaveUp { url: String, cause: String, tries: u32 },
    #[error("{}: {cause}", path.display())]
    Local { path: PathBuf, cause: io::Error },
}

/// One try's end: done, retry (after at least this long), or give up.
enum Try {
    Done(Digest),
    Again { wait: Option<Duration>, cause: String },
}

/// The temporary name a file is written to before it is complete and checked.
pub(crate) fn part_path(dest: &Path) -> PathBuf {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dest.with_file_name(format!(".{name}.part"))
}

/// A small, dependency-free jitter: the low bits of the clock.
fn jitter(max: Duration) -> Duration {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    max.mul_f64(f64::from(nanos % 1000) / 1000.0)
}

/// Fetches `task` with `agent` (whose connections are kept alive), counting body bytes into
/// `progress`.
pub(crate) fn fetch(
    agent: &ureq::Agent,
    auth: Option<&str>,
    task: &Task,
    tuning: &Tuning,
    progress: &AtomicU64,
) -> Result<Fetched, FetchError> {
    let local = |cause| FetchError::Local { path: task.dest.clone(), cause };
    if let Some(dir) = task.dest.parent() {
        fs::create_dir_all(dir).map_err(local)?;
    }
    let part = part_path(&task.dest);
    let mut fetched = Fetched::default();
    let mut mismatches = 0;
    // The hash of what the part holds, kept between tries: a resumed file is read back only
    // when this process did not write it.
    let mut resume: Option<(Sha256, u64)> = None;
    for attempt in 0..MAX_TRIES {
        let outcome = one_try(agent, auth, task, &part, tuning, progress, &mut fetched, &mut resume)?;
        match outcome {
            Try::Done(digest) if task.expected.is_none_or(|e| e == digest) => {
                let file = fs::OpenOptions::new().write(true).open(&part).map_err(local)?;
                file.sync_all().map_err(local)?;
                fs::rename(&part, &task.dest).map_err(local)?;
                fetched.digest = Some(digest);
                return Ok(fetched);
            }
            Try::Done(_) => {
                // Wrong bytes (a corrupted transfer): never kept, fetched again from the start.
                let _ = fs::remove_file(&part);
                mismatches += 1;
                tracing::warn!(file = %task.dest.display(), "the bytes received differ from SHA256SUMS.txt: fetched again");
            }
            Try::Again { wait, cause } => {
                let backoff = tuning.backoff.saturating_mul(1 << attempt.min(10)).min(tuning.max_backoff);
                let wait = wait.unwrap_or(backoff + jitter(backoff / 2)).min(tuning.max_backoff);
                tracing::info!(url = %task.url, cause, retry_in = ?wait, "transient failure: retrying");
                if attempt + 1 == MAX_TRIES {
                    return Err(FetchError::GaveUp { url: task.url.clone(), cause, tries: MAX_TRIES });
                }
                std::thread::sleep(wait);
            }
        }
        fetched.retries += 1;
    }
    match mismatches {
        0 => Err(FetchError::GaveUp { url: task.url.clone(), cause: "too many failures".into(), tries: MAX_TRIES }),
        _ => Err(FetchError::Mismatch { path: task.dest.clone(), tries: MAX_TRIES }),
    }
}

/// The SHA-256 state of the bytes already in `part` (a resumed file is hashed once, here, and
/// then as it streams).
fn hash_existing(part: &Path) -> io::Result<(Sha256, u64)> {
    let mut hasher = Sha256::new();
    let mut have = 0;
    let mut file = match fs::File::open(part) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((hasher, 0)),
        Err(e) => return Err(e),
    };
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((hasher, have));
        }
        hasher.update(&buf[..n]);
        have += n as u64;
    }
}

/// The first byte of a `Content-Range: bytes START-END/TOTAL` header.
fn range_start(value: &str) -> Option<u64> {
    value.trim().strip_prefix("bytes ")?.split('-').next()?.trim().parse().ok()
}

/// One request: resumes `part` from its length, streams the body into it.
#[allow(clippy::too_many_arguments)]
fn one_try(
    agent: &ureq::Agent,
    auth: Option<&str>,
    task: &Task,
    part: &Path,
    tuning: &Tuning,
    progress: &AtomicU64,
    fetched: &mut Fetched,
    resume: &mut Option<(Sha256, u64)>,
) -> Result<Try, FetchError> {
    let local = |cause| FetchError::Local { path: part.to_path_buf(), cause };
    let on_disk = fs::metadata(part).map_or(0, |m| m.len());
    let (mut hasher, mut have) = match resume.take() {
        Some((hasher, have)) if have == on_disk => (hasher, have),
        _ => hash_existing(part).map_err(local)?,
    };
    let mut request = agent.get(&task.url).config().timeout_per_read(Some(tuning.stall)).build();
    if let Some(auth) = auth {
        request = request.header("Authorization", auth);
    }
    if have > 0 {
        request = request.header("Range", format!("bytes={have}-"));
    }
    let response = match request.call() {
        Ok(r) => r,
        Err(e) => return Ok(Try::Again { wait: None, cause: e.to_string() }),
    };
    let code = response.status().as_u16();
    let retry_after = || {
        let header = response.headers().get("retry-after")?.to_str().ok()?;
        header.trim().parse::<u64>().ok().map(Duration::from_secs)
    };
    match code {
        200 if have > 0 => {
            // The server sent the whole file: start over.
            (hasher, have) = (Sha256::new(), 0);
        }
        200 => {}
        206 => {
            // The server must resume where the part ends; otherwise start over.
            let start = response.headers().get("content-range").and_then(|v| v.to_str().ok()).and_then(range_start);
            if start != Some(have) {
                let _ = fs::remove_file(part);
                return Ok(Try::Again { wait: Some(Duration::ZERO), cause: "resumed at another offset".into() });
            }
            fetched.resumed = true;
        }
        416 => {
            // Nothing past what is there: the part is whole (or longer than the file).
            let _ = fs::remove_file(part);
            return Ok(Try::Again { wait: Some(Duration::ZERO), cause: "range not satisfiable".into() });
        }
        401 | 403 => return Err(FetchError::Refused { url: task.url.clone(), code }),
        429 | 500..=599 => return Ok(Try::Again { wait: retry_after(), cause: format!("HTTP {code}") }),
        _ => return Err(FetchError::Status { url: task.url.clone(), code }),
    }
    let body = response.into_body().into_reader();
    append_body(body, part, (hasher, have), fetched, progress, resume)
}

/// Appends a response body to `part` (emptied first when `have` is 0), hashing it; a read that
/// fails leaves what arrived in the part and its hash in `resume`, for the next try.
fn append_body(
    mut body: impl Read,
    part: &Path,
    (mut hasher, mut have): (Sha256, u64),
    fetched: &mut Fetched,
    progress: &AtomicU64,
    resume: &mut Option<(Sha256, u64)>,
) -> Result<Try, FetchError> {
    let local = |cause| FetchError::Local { path: part.to_path_buf(), cause };
    let mut file = fs::OpenOptions::new().create(true).append(true).open(part).map_err(local)?;
    if have == 0 {
        file.set_len(0).map_err(local)?;
    }
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // Reset, stalled or cut short: what arrived stays in the part, resumed next try.
            Err(e) => {
                file.flush().map_err(local)?;
                *resume = Some((hasher, have));
                return Ok(Try::Again { wait: None, cause: e.to_string() });
            }
        };
        file.write_all(&buf[..n]).map_err(local)?;
        hasher.update(&buf[..n]);
        have += n as u64;
        fetched.bytes += n as u64;
        progress.fetch_add(n as u64, Ordering::Relaxed);
    }
    Ok(Try::Done(hasher.finalize().into()))
}
