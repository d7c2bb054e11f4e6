//! PhysioNet credentials for HTTP Basic auth: from `~/.netrc` (as wget and curl read it; refused
//! when others can read it), or `--user` with the password from `MIMIC_EYE_PHYSIONET_PASSWORD`
//! or a prompt that does not echo. The password never reaches argv, a log, an error, a metric
//! or the summary: `Credentials` prints as the user name alone.

use std::path::Path;

use anyhow::{bail, Context};

/// The environment variable holding the password for `--user`.
pub(crate) const PASSWORD_ENV: &str = "MIMIC_EYE_PHYSIONET_PASSWORD";

/// A user name and password.
#[derive(Clone)]
pub(crate) struct Credentials {
    pub user: String,
    password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, password hidden)", self.user)
    }
}

impl Credentials {
    /// The `Authorization` header's value.
    pub(crate) fn header(&self) -> String {
        format!("Basic {}", base64(format!("{}:{}", self.user, self.password).as_bytes()))
    }

    /// The credentials for `host`: `--user` (password from the environment, else a prompt on
    /// the terminal), else `~/.netrc`; `None` when there are none (an open server).
    pub(crate) fn find(host: &str, user: Option<&str>) -> anyhow::Result<Option<Self>> {
        if let Some(user) = user {
            let password = match std::env::var(PASSWORD_ENV) {
                Ok(p) => p,
                Err(_) => crate::sys::read_password(&format!("PhysioNet password for {user}: "))
                    .context("reading the password (set MIMIC_EYE_PHYSIONET_PASSWORD when there is no terminal)")?,
            };
            return Ok(Some(Self { user: user.to_string(), password }));
        }
        let Some(home) = std::env::var_os("HOME") else { return Ok(None) };
        let netrc = Path::new(&home).join(".netrc");
        match std::fs::metadata(&netrc) {
            Ok(meta) => {
                use std::os::unix::fs::PermissionsExt;
                if meta.permissions().mode() & 0o077 != 0 {
                    bail!(
                        "{} can be read by other users (mode {:o}): it holds your PhysioNet password; run `chmod 600 {}`",
                        netrc.display(),
                        meta.permissions().mode() & 0o777,
                        netrc.display()
                    );
                }
                let text = std::fs::read_to_string(&netrc).with_context(|| format!("reading {}", netrc.display()))?;
                Ok(from_netrc(&text, host))
            }
            Err(_) => Ok(None),
        }
    }
}

/// Which entry of a `.netrc` tokens belong to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// `machine` for this host.
    Host,
    /// `machine` for another host: ignored.
    Other,
    /// `default`: used when no entry names the host.
    Default,
}

/// The `machine HOST login USER password PW` entry for `host` (or the `default` one), as wget
/// and curl read `.netrc`: tokens separated by white space, in any order within an entry.
fn from_netrc(text: &str, host: &str) -> Option<Credentials> {
    let mut tokens = text.split_whitespace();
    let (mut found, mut fallback) = (None, None);
    let mut current: Option<(Entry, Option<String>, Option<String>)> = None;
    let finish = |entry: Option<(Entry, Option<String>, Option<String>)>,
                  found: &mut Option<Credentials>,
                  fallback: &mut Option<Credentials>| {
        if let Some((kind, Some(user), Some(password))) = entry {
            let slot = match kind {
                Entry::Host => found,
                Entry::Default => fallback,
                Entry::Other => return,
            };
            slot.get_or_insert(Credentials { user, password });
        }
    };
    while let Some(token) = tokens.next() {
        match token {
            "machine" => {
                finish(current.take(), &mut found, &mut fallback);
                let kind = if tokens.next() == Some(host) { Entry::Host } else { Entry::Other };
                current = Some((kind, None, None));
            }
            "default" => {
                finish(current.take(), &mut found, &mut fallback);
                current = Some((Entry::Default, None, None));
            }
            "login" => {
                if let Some(entry) = current.as_mut() {
                    entry.1 = tokens.next().map(str::to_string);
                }
            }
            "password" => {
                if let Some(entry) = current.as_mut() {
                    entry.2 = tokens.next().map(str::to_string);
                }
            }
            _ => {}
        }
    }
    finish(current.take(), &mut found, &mut fallback);
    found.or(fallback)
}

/// Standard base64 with padding (RFC 4648), for the Basic auth header.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netrc_entries_are_read_as_wget_reads_them() {
        let text = "machine example.org login a password b\n\nmachine physionet.org\n  login alice\n  password s3cret\ndefault login anon password x\n";
        let c = from_netrc(text, "physionet.org").unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("alice", "s3cret"));
        assert_eq!(from_netrc(text, "other.org").unwrap().user, "anon");
        assert!(from_netrc("machine physionet.org login alice", "physionet.org").is_none());
        // Printed, the credentials never show the password.
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn basic_auth_header_is_base64_of_user_colon_password() {
        assert_eq!(base64(b"Aladdin:open sesame"), "QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b""), "");
    }
}
