//! The output's files in the byte order of their relative paths, one folder's names in memory
//! at a time: what `SHA256SUMS.txt` lists, walked without holding a million paths.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::pipeline::paths::STATE_DIR;
use crate::sums::SUMS_FILE;

/// Calls `each` with every file under `root` that the manifest covers (relative path bytes,
/// symbolic links to files included: `sha256sum` follows them), in byte order of the path.
/// `SHA256SUMS.txt` and `.mimic-eye/` at the top are left out.
pub(super) fn each_listable_file(root: &Path, each: &mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
    fs::read_dir(root)?; // an unreadable output is an error; an unreadable subfolder is skipped
    let mut rel = Vec::new();
    walk(root, &mut rel, each)
}

fn walk(root: &Path, rel: &mut Vec<u8>, each: &mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
    let Ok(entries) = fs::read_dir(root.join(OsStr::from_bytes(rel))) else {
        return Ok(());
    };
    let top = rel.is_empty();
    // A folder sorts as "name/": every path below it compares that way against its siblings.
    let mut names: Vec<(Vec<u8>, bool)> = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        if top && (name == STATE_DIR || name == SUMS_FILE) {
            continue;
        }
        let Ok(kind) = entry.file_type() else { continue };
        let is_dir = kind.is_dir();
        let listable = kind.is_file() || (kind.is_symlink() && entry.path().is_file());
        if is_dir || listable {
            let mut key = name.as_bytes().to_vec();
            if is_dir {
                key.push(b'/');
            }
            names.push((key, is_dir));
        }
    }
    names.sort_unstable();
    for (key, is_dir) in names {
        let len = rel.len();
        rel.extend_from_slice(&key);
        let result = if is_dir { walk(root, rel, each) } else { each(rel) };
        rel.truncate(len);
        result?;
    }
    Ok(())
}
