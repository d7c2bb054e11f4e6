//! Every call into the C library, each with its safety argument, behind safe functions: the
//! rest of the program has no `unsafe` (but for the scanner's SIMD and the ISA-L face).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// The process's file-creation mask: files 0640, folders 0750.
pub(crate) const UMASK: libc::mode_t = 0o027;

/// Process-wide settings made once at start, before any thread: writes past a file size limit
/// fail with EFBIG (a clean table failure) instead of SIGXFSZ killing the process mid-publish,
/// and whatever the caller's umask, what the build creates is readable by owner and group only.
/// glibc's heap gets at most one arena per core (it makes up to 8 per core): a build's
/// reading, hashing and writing threads each freed into arenas of their own, and the freed
/// memory stayed resident (a 65,000-patient `--cohort cxr` build: 195 MB peak RSS for 74 MB
/// of heap, 106 MB with two arenas, and no slower; the hot loops do not allocate).
/// `MALLOC_ARENA_MAX` in the environment still decides when it is set.
pub fn init_process() {
    crate::version::started_unix();
    let arenas = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8) as libc::c_int;
    let arenas_set = std::env::var_os("MALLOC_ARENA_MAX").is_some();
    // SAFETY: setting a signal's disposition to "ignore", the file-creation mask and a malloc
    // parameter; none touches memory, and all run before any thread starts.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        libc::umask(UMASK);
        if !arenas_set {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

/// One syncfs makes every file of the file system holding `file` durable at once, instead of
/// an fsync per file.
pub(crate) fn syncfs(file: &File) -> io::Result<()> {
    // SAFETY: syncfs only reads the descriptor, which `file` keeps open for the call.
    match unsafe { libc::syncfs(file.as_raw_fd()) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// An exclusive, non-blocking lock on `file` (released when it is closed); false if another
/// process holds it.
pub(crate) fn try_lock_exclusive(file: &File) -> bool {
    // SAFETY: flock on a descriptor `file` owns and keeps open for the call.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// A copy-on-write clone of `input`'s data into `output` (`ioctl(FICLONE)`).
pub(crate) fn clone_file(output: &File, input: &File) -> io::Result<()> {
    // SAFETY: FICLONE reads two descriptors the two files own and keep open for the call.
    let rc = unsafe { libc::ioctl(output.as_raw_fd(), libc::FICLONE, input.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Raises the soft open-file limit to the hard one (at most 2^20); returns the soft limit.
pub(crate) fn raise_open_file_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit write to and read from a valid rlimit struct on our stack.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let mut raised = lim;
            raised.rlim_cur = lim.rlim_max.min(1 << 20);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    lim.rlim_cur
}

/// Whether this user may create files in `dir` (write and search permission).
pub(crate) fn can_write(dir: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return false };
    // SAFETY: access reads a NUL-terminated path that `c` keeps alive for the call.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

/// This process's user id.
pub(crate) fn uid() -> u32 {
    // SAFETY: getuid has no arguments and cannot fail.
    unsafe { libc::getuid() }
}

/// The soft open-file limit.
pub(crate) fn open_files_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes to a valid rlimit struct on our stack.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    lim.rlim_cur
}

/// Hands freed heap memory back to the system. A build allocates and frees tens of MiB
/// across threads; glibc keeps it in per-thread arenas, so a daemon idling after a build
/// would keep the build's peak resident.
pub(crate) fn release_free_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe { libc::malloc_trim(0) };
}

/// Bytes per memory page and clock ticks per second, for the process metrics.
pub(crate) fn page_size_and_clock_ticks() -> (u64, u64) {
    // SAFETY: sysconf has no preconditions.
    let (page, hz) = unsafe { (libc::sysconf(libc::_SC_PAGESIZE), libc::sysconf(libc::_SC_CLK_TCK)) };
    (page.max(1) as u64, hz.max(1) as u64)
}

/// The process's peak resident memory (VmHWM), for the summary and the benchmarks.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        .map_or(0, |kb| kb * 1024)
}

/// Opens `path` for reading only if it is a regular file (a link to one is followed): a FIFO
/// would block the open until a writer came, and a folder, device or socket is no table. The
/// open itself does not block (`O_NONBLOCK`, cleared once the file is known to be regular).
pub(crate) fn open_regular(path: &std::path::Path) -> io::Result<File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a folder"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "a device"
        };
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("not a regular file ({what})")));
    }
    // SAFETY: F_GETFL/F_SETFL on a descriptor `file` keeps open; only the status flags change.
    unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    Ok(file)
}

/// Reads a line from the terminal without echoing it (a password), saying `prompt` first.
/// Fails when standard input is not a terminal.
pub(crate) fn read_password(prompt: &str) -> io::Result<String> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = io::stdin();
    if !stdin.is_terminal() {
        return Err(io::Error::other("standard input is not a terminal"));
    }
    let fd = stdin.as_raw_fd();
    // SAFETY: tcgetattr/tcsetattr on the terminal behind standard input, with a termios
    // struct this function owns; echo is switched back on before returning.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut quiet = saved;
    quiet.c_lflag &= !libc::ECHO;
    eprint!("{prompt}");
    let _ = io::stderr().flush();
    // SAFETY: as above.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    // SAFETY: as above: the terminal's settings as they were.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    eprintln!();
    read?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}
