//! A PhysioNet-like file server for the fetch tests: a real HTTP/1.1 server on loopback (std
//! threads, no client mocks) serving a mirror's `physionet.org/files` tree under `/files/`, with
//! Basic auth, nginx-style index pages, ranges, per-connection throttling, injected faults and
//! counters. Paths given to its methods are relative to `/files/` (a leading `/files/` is dropped).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

/// How long a connection may take to send a request; an idle keep-alive connection is closed
/// after it (Apache's KeepAliveTimeout is 5 s), so a dead client does not hold a thread.
const IDLE: Duration = Duration::from_secs(5);
const CHUNK: usize = 64 * 1024;

#[derive(Clone, Debug)]
pub struct Options {
    /// Basic auth credentials; an empty `user` serves without auth (an open-access dataset).
    pub user: String,
    pub password: String,
    pub bytes_per_second_per_connection: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Options { user: "user".into(), password: "secret".into(), bytes_per_second_per_connection: None }
    }
}

/// ResetMidBody: headers and `after` body bytes, then a reset (SO_LINGER 0). Unavailable: 503,
/// TooManyRequests: 429, both with Retry-After. WrongBytes: the right length, one byte flipped.
/// Stall: `after` body bytes, then silence for `secs`, then a close. Unauthorized: 401 regardless.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    ResetMidBody { after: u64 },
    Unavailable { retry_after_secs: u64 },
    TooManyRequests { retry_after_secs: u64 },
    WrongBytes,
    Stall { after: u64, secs: u64 },
    Unauthorized,
}

impl Fault {
    /// Faults of the body are taken only by a GET answered with a file (200/206): a HEAD or an
    /// index page before it does not use them up. The others are taken by any request.
    fn on_body(&self) -> bool {
        matches!(self, Fault::ResetMidBody { .. } | Fault::WrongBytes | Fault::Stall { .. })
    }
}

/// What one path was asked and sent. `ranged_gets` counts GETs carrying a `Range` header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PathStats {
    pub gets: u64,
    pub heads: u64,
    pub ranged_gets: u64,
    pub bytes: u64,
    pub ranges: Vec<String>,
}

struct Shared {
    root: PathBuf,
    addr: SocketAddr,
    user: String,
    password: String,
    rate: AtomicU64, // bytes per second per connection, 0: unthrottled
    stop: AtomicBool,
    faults: Mutex<Vec<(String, Fault, u64)>>,
    /// Per path, and the distinct non-folder paths GET asked for.
    stats: Mutex<(BTreeMap<String, PathStats>, BTreeSet<String>)>,
    connections: AtomicU64,
    bytes_sent: AtomicU64,
    /// Clones of the open connections, shut down on drop so no connection thread outlives the server.
    open: Mutex<HashMap<u64, TcpStream>>,
}

/// The running server; stops (closing its connections) when dropped.
pub struct PhysioNet {
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

/// A poisoned lock (a panicking test thread) still holds consistent counters.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn key(path: &str) -> &str {
    let p = path.trim_start_matches('/');
    p.strip_prefix("files/").unwrap_or(p)
}

impl PhysioNet {
    pub fn start(root: &Path, options: Options) -> PhysioNet {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let shared = Arc::new(Shared {
            root: fs::canonicalize(root).expect("server root exists"),
            addr: listener.local_addr().expect("local address"),
            user: options.user,
            password: options.password,
            rate: AtomicU64::new(options.bytes_per_second_per_connection.unwrap_or(0)),
            stop: AtomicBool::new(false),
            faults: Mutex::default(),
            stats: Mutex::default(),
            connections: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            open: Mutex::default(),
        });
        let s = shared.clone();
        let accept = thread::spawn(move || {
            for (id, conn) in (0u64..).zip(listener.incoming()) {
                if s.stop.load(SeqCst) {
                    break; // the drop's own connection
                }
                let Ok(stream) = conn else { continue };
                s.connections.fetch_add(1, SeqCst);
                if let Ok(clone) = stream.try_clone() {
                    lock(&s.open).insert(id, clone);
                }
                let s = s.clone();
                thread::spawn(move || {
                    let reset = serve(&s, &stream);
                    // The clone goes first: the socket closes (FIN, or RST after a reset)
                    // only when its last descriptor does.
                    lock(&s.open).remove(&id);
                    if reset {
                        linger_zero(&stream);
                    }
                });
            }
        });
        PhysioNet { shared, accept: Some(accept) }
    }

    /// `http://127.0.0.1:PORT/files/`
    pub fn url(&self) -> String {
        format!("http://{}/files/", self.shared.addr)
    }

    pub fn port(&self) -> u16 {
        self.shared.addr.port()
    }

    /// `fault` for the next `times` requests whose path ends with `path_suffix` (rules are
    /// tried in the order set).
    pub fn fault(&self, path_suffix: &str, fault: Fault, times: u64) {
        lock(&self.shared.faults).push((path_suffix.to_string(), fault, times));
    }

    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
    }

    /// Fault uses still pending, over all rules.
    pub fn faults_left(&self) -> u64 {
        lock(&self.shared.faults).iter().map(|f| f.2).sum()
    }

    /// Changes the throttle for responses started from now on.
    pub fn throttle(&self, bytes_per_second_per_connection: Option<u64>) {
        self.shared.rate.store(bytes_per_second_per_connection.unwrap_or(0), SeqCst);
    }

    pub fn stats(&self, path: &str) -> PathStats {
        lock(&self.shared.stats).0.get(key(path)).cloned().unwrap_or_default()
    }

    /// GETs of `path`.
    pub fn requests(&self, path: &str) -> u64 {
        self.stats(path).gets
    }

    /// `Range` headers seen for `path`, in order.
    pub fn ranges(&self, path: &str) -> Vec<String> {
        self.stats(path).ranges
    }

    /// Body bytes sent over all paths (files, index pages, error pages).
    pub fn bytes_sent(&self) -> u64 {
        self.shared.bytes_sent.load(SeqCst)
    }

    pub fn connections(&self) -> u64 {
        self.shared.connections.load(SeqCst)
    }

    /// Distinct paths GET asked for that are not folders (existing or not, authorized or not), sorted.
    pub fn paths_requested(&self) -> Vec<String> {
        lock(&self.shared.stats).1.iter().cloned().collect()
    }
}

impl Drop for PhysioNet {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        let _ = TcpStream::connect(self.shared.addr); // unblocks accept
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        for (_, s) in lock(&self.shared.open).drain() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn linger_zero(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    let size = std::mem::size_of::<libc::linger>() as libc::socklen_t;
    // SAFETY: a valid socket descriptor, and a linger struct of the size passed.
    unsafe { libc::setsockopt(stream.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, (&raw const l).cast(), size) };
}

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    keep_alive: bool,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

enum Next {
    KeepAlive,
    Close,
    Reset,
}

/// Serves one connection's requests; true when it must end with a reset.
fn serve(s: &Shared, stream: &TcpStream) -> bool {
    let _ = stream.set_read_timeout(Some(IDLE));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(stream);
    while !s.stop.load(SeqCst) {
        let Some(req) = read_request(&mut reader) else { return false };
        match respond(s, stream, &req) {
            Ok(Next::KeepAlive) if req.keep_alive => {}
            Ok(Next::Reset) => return true,
            _ => return false,
        }
    }
    false
}

/// A request's head (GET and HEAD have no body); None on EOF, timeout or garbage.
fn read_request(r: &mut impl BufRead) -> Option<Request> {
    let mut lines: Vec<String> = Vec::new();
    loop {
        let mut line = String::new();
        if r.take(8192).read_line(&mut line).ok()? == 0 || !line.ends_with('\n') || lines.len() > 100 {
            return None;
        }
        match line.trim_end() {
            "" if lines.is_empty() => {} // empty lines before a request are allowed
            "" => break,
            l => lines.push(l.to_string()),
        }
    }
    let mut parts = lines[0].split_whitespace();
    let (method, target, version) = (parts.next()?.to_string(), parts.next()?.to_string(), parts.next()?);
    let http11 = version == "HTTP/1.1";
    let headers = lines[1..].iter().map(|h| h.split_once(':').map(|(k, v)| (k.trim().into(), v.trim().into())));
    let mut req = Request { method, target, headers: headers.collect::<Option<_>>()?, keep_alive: http11 };
    if let Some(c) = req.header("connection") {
        let has = |t: &str| c.split(',').any(|x| x.trim().eq_ignore_ascii_case(t));
        req.keep_alive = !has("close") && (http11 || has("keep-alive"));
    }
    Some(req)
}

/// How to answer the request being served.
#[derive(Clone, Copy)]
struct Reply<'a> {
    s: &'a Shared,
    out: &'a TcpStream,
    rel: &'a str,
    head: bool,
    keep: bool,
}

impl Reply<'_> {
    fn send(self, status: &str, headers: &[(&str, String)], body: &[u8]) -> io::Result<Next> {
        let mut bytes = head_of(status, headers, body.len() as u64, self.keep).into_bytes();
        if !self.head {
            bytes.extend_from_slice(body);
            count(self.s, self.rel, body.len() as u64);
        }
        let mut out = self.out;
        out.write_all(&bytes)?;
        Ok(if self.keep { Next::KeepAlive } else { Next::Close })
    }

    /// An error page with the status as its body.
    fn error(self, status: &str, extra: &[(&str, String)]) -> io::Result<Next> {
        let body = format!("<html><body><h1>{status}</h1></body></html>\r\n");
        let mut headers = vec![("Content-Type", "text/html".to_string())];
        headers.extend(extra.iter().cloned());
        self.send(status, &headers, body.as_bytes())
    }
}

fn respond(s: &Shared, out: &TcpStream, req: &Request) -> io::Result<Next> {
    let head = req.method == "HEAD";
    let r = Reply { s, out, rel: "", head, keep: req.keep_alive };
    if !head && req.method != "GET" {
        return Reply { keep: false, ..r }.error("405 Method Not Allowed", &[("Allow", "GET, HEAD".into())]);
    }
    // Origin-form or absolute-form, without the query.
    let raw = req.target.split(['?', '#']).next().unwrap_or("");
    let raw = raw.strip_prefix("http://").map_or(raw, |r| r.find('/').map_or("/", |i| &r[i..]));
    let Some(path) = percent_decode(raw) else { return Reply { keep: false, ..r }.error("400 Bad Request", &[]) };
    let redirect = |r: Reply| r.error("301 Moved Permanently", &[("Location", format!("http://{}{raw}/", s.addr))]);
    let unauthorized =
        |r: Reply| r.error("401 Unauthorized", &[("WWW-Authenticate", "Basic realm=\"PhysioNet\"".into())]);
    if path == "/files" {
        return redirect(r);
    }
    let Some(rel) = path.strip_prefix("/files/") else { return r.error("404 Not Found", &[]) };
    let (r, fs_path) = (Reply { rel, ..r }, s.root.join(rel));
    record(s, rel, req, head, &fs_path);

    if let Some(f) = take_fault(s, &path, |f| !f.on_body()) {
        return match f {
            Fault::Unavailable { retry_after_secs: n } => {
                r.error("503 Service Unavailable", &[("Retry-After", n.to_string())])
            }
            Fault::TooManyRequests { retry_after_secs: n } => {
                r.error("429 Too Many Requests", &[("Retry-After", n.to_string())])
            }
            _ => unauthorized(r),
        };
    }
    if !s.user.is_empty() && !authorized(s, req) {
        return unauthorized(r);
    }
    if rel.split('/').any(|seg| seg == ".." || seg == "." || seg.contains(['\\', '\0'])) {
        return Reply { keep: false, ..r }.error("400 Bad Request", &[]);
    }
    // Links in the tree must not lead out of it either; PhysioNet's server has no index.html.
    let inside = fs::canonicalize(&fs_path).is_ok_and(|c| c.starts_with(&s.root));
    let hidden = rel.rsplit('/').next() == Some("index.html");
    match fs::metadata(&fs_path).ok().filter(|_| inside && !hidden) {
        Some(m) if m.is_dir() && (rel.is_empty() || rel.ends_with('/')) => {
            r.send("200 OK", &[("Content-Type", "text/html".into())], index_page(&fs_path, &path)?.as_bytes())
        }
        Some(m) if m.is_dir() => redirect(r),
        Some(m) if m.is_file() => send_file(r, req, &path, &fs_path, &m),
        _ => r.error("404 Not Found", &[]),
    }
}

fn record(s: &Shared, rel: &str, req: &Request, head: bool, fs_path: &Path) {
    let (stats, files) = &mut *lock(&s.stats);
    let st = stats.entry(rel.to_string()).or_default();
    if head {
        st.heads += 1;
    } else {
        st.gets += 1;
        if let Some(r) = req.header("range") {
            st.ranged_gets += 1;
            st.ranges.push(r.to_string());
        }
        if !rel.is_empty() && !rel.ends_with('/') && !fs_path.is_dir() {
            files.insert(rel.to_string());
        }
    }
}

fn take_fault(s: &Shared, path: &str, kind: impl Fn(&Fault) -> bool) -> Option<Fault> {
    let mut faults = lock(&s.faults);
    let i = faults.iter().position(|(suffix, f, n)| *n > 0 && kind(f) && path.ends_with(suffix.as_str()))?;
    faults[i].2 -= 1;
    let f = faults[i].1.clone();
    if faults[i].2 == 0 {
        faults.remove(i);
    }
    Some(f)
}

fn authorized(s: &Shared, req: &Request) -> bool {
    let Some(b64) = req.header("authorization").and_then(|v| v.strip_prefix("Basic ")) else { return false };
    base64_decode(b64.trim()).is_some_and(|d| d == format!("{}:{}", s.user, s.password).as_bytes())
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0);
    for c in s.trim_end_matches('=').bytes() {
        acc = ((acc << 6) | ALPHABET.iter().position(|&a| a == c)? as u32) & 0xffff;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let (b, mut out, mut i) = (s.as_bytes(), Vec::with_capacity(s.len()), 0);
    while i < b.len() {
        if b[i] == b'%' {
            let h = b.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
            out.push(u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|c| match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (c as char).to_string(),
            _ => format!("%{c:02X}"),
        })
        .collect()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn http_date(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// nginx's autoindex, as PhysioNet serves it: `../`, then folders, then files, each sorted; dot
/// files and index.html left out.
fn index_page(dir: &Path, url_path: &str) -> io::Result<String> {
    let mut entries = Vec::new();
    for e in fs::read_dir(dir)?.flatten() {
        let Ok(name) = e.file_name().into_string() else { continue };
        if name.starts_with('.') || name == "index.html" {
            continue;
        }
        let Ok(m) = fs::metadata(e.path()) else { continue };
        let date = chrono::DateTime::<chrono::Utc>::from(m.modified()?).format("%d-%b-%Y %H:%M");
        entries.push((!m.is_dir(), name, date.to_string(), if m.is_dir() { "-".into() } else { m.len().to_string() }));
    }
    entries.sort();
    let title = html_escape(url_path);
    let mut page = format!(
        "<html>\r\n<head><title>Index of {title}</title></head>\r\n<body>\r\n<h1>Index of {title}</h1><hr><pre><a href=\"../\">../</a>\r\n"
    );
    for (is_file, name, date, size) in entries {
        let slash = if is_file { "" } else { "/" };
        let shown = format!("{}{slash}", html_escape(&name));
        let pad = 51usize.saturating_sub(name.len() + slash.len());
        page += &format!("<a href=\"{}{slash}\">{shown}</a>{:pad$}{date} {size:>19}\r\n", percent_encode(&name), "");
    }
    page += "</pre><hr></body>\r\n</html>\r\n";
    Ok(page)
}

fn head_of(status: &str, headers: &[(&str, String)], len: u64, keep: bool) -> String {
    let mut h = format!(
        "HTTP/1.1 {status}\r\nServer: physionet-test\r\nDate: {}\r\nContent-Length: {len}\r\n",
        http_date(SystemTime::now())
    );
    for (k, v) in headers {
        h += &format!("{k}: {v}\r\n");
    }
    h + if keep { "Connection: keep-alive\r\n\r\n" } else { "Connection: close\r\n\r\n" }
}

fn count(s: &Shared, rel: &str, n: u64) {
    s.bytes_sent.fetch_add(n, SeqCst);
    lock(&s.stats).0.entry(rel.to_string()).or_default().bytes += n;
}

/// `None`: no usable range (the whole file, as RFC 9110 allows for several ranges or bad syntax);
/// `Some(None)`: unsatisfiable; `Some(Some((start, end)))`, end exclusive.
fn parse_range(v: &str, total: u64) -> Option<Option<(u64, u64)>> {
    let spec = v.trim().strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-').filter(|_| !spec.contains(','))?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let n: u64 = b.parse().ok()?; // the last n bytes
        return Some((n > 0 && total > 0).then(|| (total - n.min(total), total)));
    }
    let start: u64 = a.parse().ok()?;
    let end =
        if b.is_empty() { total } else { b.parse::<u64>().ok().filter(|&e| e >= start)?.saturating_add(1).min(total) };
    Some((start < total).then_some((start, end)))
}

fn send_file(r: Reply, req: &Request, path: &str, fs_path: &Path, meta: &fs::Metadata) -> io::Result<Next> {
    let (s, mut out, total) = (r.s, r.out, meta.len());
    let mtime = meta.modified()?;
    let micros = mtime.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_micros());
    let (etag, modified) = (format!("\"{total:x}-{micros:x}\""), http_date(mtime));
    // A resume whose validator no longer matches gets the whole (new) file.
    let fresh = req.header("if-range").is_none_or(|v| v == etag || v == modified);
    let range = req.header("range").filter(|_| fresh).and_then(|r| parse_range(r, total));
    let mut headers = vec![("Accept-Ranges", "bytes".to_string()), ("Last-Modified", modified), ("ETag", etag)];
    let ext = fs_path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let kind = if matches!(ext, "txt" | "csv") { "text/plain" } else { "application/octet-stream" };
    headers.push(("Content-Type", kind.into()));
    let (status, start, end) = match range {
        Some(None) => {
            headers.push(("Content-Range", format!("bytes */{total}")));
            return r.send("416 Range Not Satisfiable", &headers, b"");
        }
        Some(Some((a, b))) => {
            headers.push(("Content-Range", format!("bytes {a}-{}/{total}", b - 1)));
            ("206 Partial Content", a, b)
        }
        None => ("200 OK", 0, total),
    };
    let len = end - start;
    out.write_all(head_of(status, &headers, len, r.keep).as_bytes())?;
    if r.head {
        return Ok(if r.keep { Next::KeepAlive } else { Next::Close });
    }
    let fault = take_fault(s, path, Fault::on_body);
    let limit = match fault {
        Some(Fault::ResetMidBody { after } | Fault::Stall { after, .. }) => after.min(len),
        _ => len,
    };
    let mut file = File::open(fs_path)?;
    file.seek(SeekFrom::Start(start))?;
    let rate = s.rate.load(SeqCst);
    // Throttled: slices of a twentieth of a second, each sent when the rate allows it.
    let slice = if rate > 0 { (rate / 20).clamp(1, CHUNK as u64) as usize } else { CHUNK };
    let (mut buf, mut sent, t0) = (vec![0u8; slice], 0u64, Instant::now());
    while sent < limit {
        let want = (limit - sent).min(slice as u64) as usize;
        let n = file.read(&mut buf[..want])?;
        if n == 0 {
            break; // the file shrank under us: the client sees a short body
        }
        if fault == Some(Fault::WrongBytes) && (sent..sent + n as u64).contains(&(len / 2)) {
            buf[(len / 2 - sent) as usize] ^= 0xff;
        }
        count(s, r.rel, n as u64); // before the write: a client that read the bytes sees them counted
        out.write_all(&buf[..n])?;
        sent += n as u64;
        if rate > 0 {
            let due = t0 + Duration::from_secs_f64(sent as f64 / rate as f64);
            thread::sleep(due.saturating_duration_since(Instant::now()));
        }
    }
    match fault {
        Some(Fault::ResetMidBody { .. }) => {
            thread::sleep(Duration::from_millis(50)); // lets loopback deliver the bytes before the RST
            Ok(Next::Reset)
        }
        Some(Fault::Stall { secs, .. }) => {
            let until = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < until && !s.stop.load(SeqCst) {
                thread::sleep(Duration::from_millis(20));
            }
            Ok(Next::Close)
        }
        _ => Ok(if r.keep { Next::KeepAlive } else { Next::Close }),
    }
}
