//! How one source file becomes an output file: a hard link, a copy (0640, with its source's
//! identity and SHA-256 recorded), a copy-on-write clone or a symbolic link.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::config::FilesMode;
use crate::pipeline::state::{self, CopyRecord};

/// Possibly in place: the same inode (hard link), or a file of the same size (a copy, which
/// `kept_copy` then checks against its record).
pub(super) fn same_file(s: &fs::Metadata, d: &fs::Metadata, mode: FilesMode) -> bool {
    match mode {
        FilesMode::Hardlink if s.dev() == d.dev() && s.ino() == d.ino() => true,
        _ => s.len() == d.len(),
    }
}

/// Errors that say the output cannot be written at all (as opposed to one source entry).
pub(super) fn is_output_failure(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EFBIG | libc::EROFS | libc::EDQUOT | libc::EIO))
}

/// How one file of a copied folder is in the output.
pub(super) enum Placed {
    Linked,
    Copied(CopyRecord),
    Reflinked(CopyRecord),
    Symlinked,
    /// Written by the build (a merged ellipses file).
    Written,
}

/// The absolute path a symbolic link into the input points at.
pub(super) fn link_target(src: &Path) -> PathBuf {
    std::path::absolute(src).unwrap_or_else(|_| src.to_path_buf())
}

pub(super) fn is_mismatch(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::InvalidData && e.to_string() == crate::sums::MISMATCH
}

/// The file system cannot clone (ext4, tmpfs), or not across these two.
pub(super) fn is_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EXDEV | libc::EINVAL | libc::ENOTTY | libc::ENOSYS))
}

/// A copy-on-write clone of `src` at a new `dest` (`ioctl(FICLONE)`), mode 0640, recorded like a
/// copy. The clone is read once to record its SHA-256 (and to check it when listed).
pub(super) fn reflink(src: &Path, dest: &Path, expected: Option<&crate::sums::Expected>) -> io::Result<CopyRecord> {
    let input = fs::File::open(src)?;
    let mut record = CopyRecord::identity(&input.metadata()?);
    let output = fs::File::create(dest)?;
    crate::sys::clone_file(&output, &input)?;
    drop(output);
    state::set_output_mode(dest)?;
    let digest = crate::sums::hash_file(dest)?;
    record.sha256 = crate::sums::hex(&digest);
    record.reflink = true;
    record.set_copy(&fs::metadata(dest)?);
    if let Some(expected) = expected {
        expected.check(&digest)?;
    }
    Ok(record)
}

/// Copies `src` to a new `dest` (mode 0640, not the source's) and records the source's
/// identity, taken before the copy, and the SHA-256 of the bytes copied, compared with the
/// listed digest when the dataset's SHA256SUMS.txt lists the file.
pub(super) fn copy_recorded(
    src: &Path,
    dest: &Path,
    expected: Option<&crate::sums::Expected>,
) -> io::Result<CopyRecord> {
    use sha2::Digest as _;
    use std::io::{Read, Write};
    let mut input = fs::File::open(src)?;
    let mut record = CopyRecord::identity(&input.metadata()?);
    let mut output = fs::File::create(dest)?;
    let mut hash = sha2::Sha256::new();
    let mut buf = vec![0u8; crate::source::CHUNK];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hash.update(&buf[..n]);
        output.write_all(&buf[..n])?;
    }
    drop(output);
    state::set_output_mode(dest)?;
    let digest: crate::sums::Digest = hash.finalize().into();
    record.sha256 = crate::sums::hex(&digest);
    record.set_copy(&fs::metadata(dest)?);
    if let Some(expected) = expected {
        expected.check(&digest)?;
    }
    Ok(record)
}
