//! The test PhysioNet server checked on its own, with a raw std TcpStream client, so that a
//! failing fetch test is never the server's fault.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::physionet::{Fault, Options, PhysioNet};

/// RFC 7617's example: Aladdin / open sesame.
const AUTH: &str = "Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==";

fn options() -> Options {
    Options { user: "Aladdin".into(), password: "open sesame".into(), bytes_per_second_per_connection: None }
}

struct Response {
    code: u16,
    headers: Vec<(String, String)>,
    /// What arrived of the body: shorter than Content-Length when the connection broke.
    body: Vec<u8>,
    /// The body ended by a connection reset.
    reset: bool,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    fn length(&self) -> usize {
        self.header("content-length").unwrap().parse().unwrap()
    }
}

struct Client(BufReader<TcpStream>);

impl Client {
    fn new(server: &PhysioNet) -> Client {
        let s = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client(BufReader::new(s))
    }

    fn send(&mut self, method: &str, path: &str, headers: &[&str]) -> Response {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        headers.iter().for_each(|h| req += &format!("{h}\r\n"));
        self.0.get_mut().write_all(format!("{req}\r\n").as_bytes()).unwrap();
        let mut line = String::new();
        self.0.read_line(&mut line).unwrap();
        let code = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.0.read_line(&mut line).unwrap();
            match line.trim_end().split_once(": ") {
                Some((k, v)) => headers.push((k.to_string(), v.to_string())),
                None => break,
            }
        }
        let mut r = Response { code, headers, body: Vec::new(), reset: false };
        if method != "HEAD" {
            let mut buf = [0u8; 8192];
            while r.body.len() < r.length() {
                match self.0.read(&mut buf[..(r.length() - r.body.len()).min(8192)]) {
                    Ok(0) => break,
                    Err(e) => {
                        r.reset = e.kind() == std::io::ErrorKind::ConnectionReset;
                        break;
                    }
                    Ok(n) => r.body.extend_from_slice(&buf[..n]),
                }
            }
        }
        r
    }

    fn get(&mut self, path: &str, headers: &[&str]) -> Response {
        self.send("GET", path, headers)
    }

    /// True when the server closed the connection (EOF or reset) within the read timeout.
    fn closed(&mut self) -> bool {
        matches!(self.0.read(&mut [0u8; 1]), Ok(0) | Err(_))
    }
}

/// A server on a tree with one file `ds/1.0/data.bin` of `len` bytes; the file's bytes.
fn one_file(dir: &Path, len: usize, options: Options) -> (PhysioNet, Vec<u8>) {
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    fs::create_dir_all(dir.join("root/ds/1.0")).unwrap();
    fs::write(dir.join("root/ds/1.0/data.bin"), &data).unwrap();
    (PhysioNet::start(&dir.join("root"), options), data)
}

const DATA: &str = "/files/ds/1.0/data.bin";

#[test]
fn index_pages_list_the_mirror_behind_basic_auth_on_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    common::synth(dir.path(), &["--patients", "3", "--others", "2", "--layout", "physionet"]);
    let root = dir.path().join("physionet.org/files");
    assert!(root.join("mimiciv/index.html").is_file(), "synth leaves wget's index.html files, to be hidden");
    let server = PhysioNet::start(&root, options());
    let mut c = Client::new(&server);

    let r = c.get("/files/", &[]);
    assert_eq!((r.code, r.header("www-authenticate")), (401, Some("Basic realm=\"PhysioNet\"")));
    assert_eq!(c.get("/files/", &["Authorization: Basic QWxhZGRpbjp3cm9uZw=="]).code, 401, "Aladdin:wrong");

    // Every folder's page lists exactly its folders (with a slash) and files, never index.html.
    let mut folders = vec![String::new()];
    while let Some(folder) = folders.pop() {
        let r = c.get(&format!("/files/{folder}"), &[AUTH]);
        assert_eq!(r.code, 200, "{folder}");
        let page = String::from_utf8(r.body).unwrap();
        let listed: BTreeSet<String> =
            page.split("<a href=\"").skip(1).filter_map(|a| Some(a.split_once('"')?.0.to_string())).collect();
        let mut expected = BTreeSet::from(["../".to_string()]);
        for e in fs::read_dir(root.join(&folder)).unwrap().flatten() {
            let name = e.file_name().into_string().unwrap();
            if e.file_type().unwrap().is_dir() {
                folders.push(format!("{folder}{name}/"));
                expected.insert(format!("{name}/"));
            } else if name != "index.html" {
                expected.insert(name);
            }
        }
        assert_eq!(listed, expected, "index of /files/{folder}");
    }

    let r = c.get("/files/mimiciv", &[AUTH]);
    assert_eq!((r.code, r.header("location")), (301, Some(format!("{}mimiciv/", server.url()).as_str())));
    assert_eq!(c.get("/files/mimiciv/index.html", &[AUTH]).code, 404);
    assert_eq!(c.get("/files/mimiciv/nothing.txt", &[AUTH]).code, 404);
    let sums = c.get("/files/mimiciv/2.2/SHA256SUMS.txt", &[AUTH]);
    assert_eq!(sums.body, fs::read(root.join("mimiciv/2.2/SHA256SUMS.txt")).unwrap());
    assert_eq!(server.connections(), 1, "every request above on one keep-alive connection");
    let asked = ["mimiciv/2.2/SHA256SUMS.txt", "mimiciv/index.html", "mimiciv/nothing.txt"];
    assert_eq!(server.paths_requested(), asked);

    assert_eq!(c.get("/files/", &[AUTH, "Connection: close"]).code, 200);
    assert!(c.closed(), "Connection: close is honoured");
}

#[test]
fn ranges_head_and_validators() {
    let dir = tempfile::tempdir().unwrap();
    let (server, data) = one_file(dir.path(), 1000, options());
    let mut c = Client::new(&server);
    let r = c.get(DATA, &[AUTH, "Range: bytes=10-19"]);
    assert_eq!((r.code, r.header("content-range")), (206, Some("bytes 10-19/1000")));
    assert_eq!(r.body, data[10..20]);
    let r = c.get(DATA, &[AUTH, "Range: bytes=990-"]);
    assert_eq!((r.code, r.header("content-range"), &r.body[..]), (206, Some("bytes 990-999/1000"), &data[990..]));
    let r = c.get(DATA, &[AUTH, "Range: bytes=1000-"]);
    assert_eq!((r.code, r.header("content-range")), (416, Some("bytes */1000")));

    // HEAD: the length and validators, no body (the next response on the connection parses).
    let h = c.send("HEAD", DATA, &[AUTH]);
    assert_eq!((h.code, h.length(), h.header("accept-ranges")), (200, 1000, Some("bytes")));
    let etag = h.header("etag").unwrap().to_string();
    assert!(h.header("last-modified").unwrap().ends_with(" GMT"));
    let r = c.get(DATA, &[AUTH, "Range: bytes=500-", &format!("If-Range: {etag}")]);
    assert_eq!((r.code, &r.body[..]), (206, &data[500..]));
    let r = c.get(DATA, &[AUTH, "Range: bytes=500-", "If-Range: \"stale\""]);
    assert_eq!((r.code, &r.body[..]), (200, &data[..]), "a stale validator gets the whole file");

    let key = "ds/1.0/data.bin";
    assert_eq!(server.ranges(key), ["bytes=10-19", "bytes=990-", "bytes=1000-", "bytes=500-", "bytes=500-"]);
    let stats = server.stats(DATA);
    assert_eq!((stats.gets, stats.heads, stats.ranged_gets, stats.bytes), (5, 1, 5, 10 + 10 + 500 + 1000));
    assert_eq!(server.requests(key), 5);
    assert_eq!(server.connections(), 1);
}

#[test]
fn throttle_paces_each_connection() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options { bytes_per_second_per_connection: Some(100_000), ..options() };
    let (server, data) = one_file(dir.path(), 200_000, options);
    let t = Instant::now();
    let r = Client::new(&server).get(DATA, &[AUTH]);
    println!("200 KB at 100 KB/s took {:?}", t.elapsed());
    assert_eq!(r.body, data);
    assert!(t.elapsed() >= Duration::from_secs(1), "throttled: {:?}", t.elapsed());
    assert_eq!(server.bytes_sent(), 200_000);
}

#[test]
fn faults_do_what_they_say_then_stop() {
    let dir = tempfile::tempdir().unwrap();
    let (server, data) = one_file(dir.path(), 100_000, options());

    server.fault("data.bin", Fault::ResetMidBody { after: 1000 }, 1);
    let r = Client::new(&server).get(DATA, &[AUTH]);
    assert_eq!((r.code, r.length()), (200, 100_000));
    assert!(r.reset && r.body.len() <= 1000 && r.body == data[..r.body.len()], "{} bytes", r.body.len());
    println!("reset after {} of 1000 bytes", r.body.len());

    // A HEAD does not use up a fault of the body.
    server.fault("data.bin", Fault::WrongBytes, 1);
    let mut c = Client::new(&server);
    assert_eq!(c.send("HEAD", DATA, &[AUTH]).code, 200);
    assert_eq!(server.faults_left(), 1);
    let r = c.get(DATA, &[AUTH]);
    assert_eq!((r.code, r.body.len()), (200, data.len()));
    assert_ne!(r.body, data);

    server.fault("1.0/data.bin", Fault::Unavailable { retry_after_secs: 7 }, 1);
    server.fault("data.bin", Fault::TooManyRequests { retry_after_secs: 3 }, 1);
    server.fault("data.bin", Fault::Unauthorized, 1);
    let r = c.get(DATA, &[AUTH]);
    assert_eq!((r.code, r.header("retry-after")), (503, Some("7")));
    let r = c.get(DATA, &[AUTH]);
    assert_eq!((r.code, r.header("retry-after")), (429, Some("3")));
    assert_eq!(c.get(DATA, &[AUTH]).code, 401);

    server.fault("data.bin", Fault::Stall { after: 100, secs: 1 }, 1);
    let t = Instant::now();
    let r = c.get(DATA, &[AUTH]);
    assert_eq!((r.code, &r.body[..]), (200, &data[..100]));
    assert!(t.elapsed() >= Duration::from_millis(900), "stalled {:?}", t.elapsed());

    assert_eq!(server.faults_left(), 0);
    assert_eq!(Client::new(&server).get(DATA, &[AUTH]).body, data, "faults used up");
    // A fault on another path leaves this one alone.
    server.fault("other.bin", Fault::Unauthorized, 1);
    assert_eq!(Client::new(&server).get(DATA, &[AUTH]).code, 200);
}

#[test]
fn nothing_outside_the_root_and_drop_stops() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = one_file(dir.path(), 10, options());
    fs::write(dir.path().join("secret.txt"), "secret").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), dir.path().join("root/ds/link.txt")).unwrap();
    for path in [
        "/files/../secret.txt",
        "/files/%2e%2e/secret.txt",
        "/files/ds/%2E%2E/%2e%2e/secret.txt",
        "/files/..%2fsecret.txt",
        "/files/ds/link.txt",
        "/secret.txt",
    ] {
        let r = Client::new(&server).get(path, &[AUTH]);
        assert!(matches!(r.code, 400 | 404), "{path}: {}", r.code);
        assert!(!String::from_utf8_lossy(&r.body).contains("secret"), "{path}");
    }
    let port = server.port();
    let mut idle = Client::new(&server);
    assert_eq!(idle.get(DATA, &[AUTH]).code, 200);
    drop(server);
    assert!(idle.closed(), "open connections closed by the drop");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "no more listening");
}
