//! Identifiers that become parts of output paths, validated at the edge.
//!
//! Every id that is joined into a path is parsed into one of these types first; anything that
//! does not match its format is rejected, so `../`, `/`, NUL or over-long values can never reach
//! the file system.

use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

/// Why an id was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("empty {0}")]
    Empty(&'static str),
    /// The value itself is never part of the text: it is credentialed data, and errors reach
    /// logs, metrics and `/status`. Its length helps tell a cut value from a wrong column.
    #[error("{kind} is not {expected} ({len} bytes)")]
    Malformed { kind: &'static str, expected: &'static str, len: usize },
}

fn malformed(kind: &'static str, expected: &'static str, raw: &[u8]) -> IdError {
    IdError::Malformed { kind, expected, len: raw.len() }
}

/// Parses 1–18 ASCII digits (MIMIC ids are 8). Anything else is an error.
fn parse_digits(kind: &'static str, raw: &[u8]) -> Result<u64, IdError> {
    if raw.is_empty() {
        return Err(IdError::Empty(kind));
    }
    if raw.len() > 18 {
        return Err(malformed(kind, "at most 18 digits", raw));
    }
    let mut v: u64 = 0;
    for &b in raw {
        if !b.is_ascii_digit() {
            return Err(malformed(kind, "a number", raw));
        }
        v = v * 10 + u64::from(b - b'0');
    }
    Ok(v)
}

macro_rules! numeric_id {
    ($(#[$doc:meta])* $vis:vis $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis struct $name(u64);

        impl $name {
            /// Parses the id's digits, as they are written in the tables.
            $vis fn parse(raw: &[u8]) -> Result<Self, IdError> {
                parse_digits($kind, raw).map(Self)
            }
            /// The id's number (not every id type needs it).
            #[allow(dead_code)]
            $vis fn get(self) -> u64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

numeric_id!(
    /// A MIMIC `subject_id`: a patient.
    pub SubjectId, "subject_id"
);
numeric_id!(pub(crate) StudyId, "study_id");
numeric_id!(pub(crate) StayId, "stay_id");

impl SubjectId {
    /// `patient_<sid>`: the patient's folder name.
    pub fn folder(self) -> String {
        format!("patient_{}", self.0)
    }
}

/// A MIMIC-CXR image id: 5 groups of 8 lower-case hex digits joined by `-` (44 characters),
/// safe to use as a file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct DicomId(String);

impl DicomId {
    pub(crate) const LEN: usize = 44;

    pub(crate) fn parse(raw: &[u8]) -> Result<Self, IdError> {
        if raw.is_empty() {
            return Err(IdError::Empty("dicom_id"));
        }
        if !Self::is_valid(raw) {
            return Err(malformed("dicom_id", "5 groups of 8 lower-case hex digits", raw));
        }
        // is_valid admits only ASCII, so this conversion cannot fail.
        Ok(Self(String::from_utf8_lossy(raw).into_owned()))
    }

    pub(crate) fn is_valid(raw: &[u8]) -> bool {
        raw.len() == Self::LEN
            && raw.iter().enumerate().all(|(i, &b)| {
                if i % 9 == 8 {
                    b == b'-'
                } else {
                    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
                }
            })
    }

    /// A cut-short id: a proper prefix of the valid form (used by the EyeGaze repair).
    pub(crate) fn is_valid_prefix(raw: &[u8]) -> bool {
        !raw.is_empty()
            && raw.len() < Self::LEN
            && raw.iter().enumerate().all(|(i, &b)| {
                if i % 9 == 8 {
                    b == b'-'
                } else {
                    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
                }
            })
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DicomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A REFLACX reading id: `P`, 3 digits, `R`, 6 digits (e.g. `P102R108387`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ReflacxId(String);

impl ReflacxId {
    pub(crate) fn parse(raw: &[u8]) -> Result<Self, IdError> {
        if raw.is_empty() {
            return Err(IdError::Empty("REFLACX id"));
        }
        let ok = raw.len() == 11
            && raw[0] == b'P'
            && raw[1..4].iter().all(u8::is_ascii_digit)
            && raw[4] == b'R'
            && raw[5..].iter().all(u8::is_ascii_digit);
        if !ok {
            return Err(malformed("REFLACX id", "P###R######", raw));
        }
        Ok(Self(String::from_utf8_lossy(raw).into_owned()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ReflacxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_ids_are_digits_only() {
        assert_eq!(SubjectId::parse(b"10000032").unwrap().get(), 10000032);
        for bad in [&b""[..], b"../1", b"/etc", b"1\0", b"12a", b" 1", b"1234567890123456789"] {
            assert!(SubjectId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn dicom_ids_need_the_exact_form() {
        let good = b"02aa804e-bde0afdd-112c0b34-7bc16630-4e384014";
        assert!(DicomId::parse(good).is_ok());
        assert!(DicomId::parse(b"02AA804E-bde0afdd-112c0b34-7bc16630-4e384014").is_err());
        assert!(DicomId::parse(b"../../../../../../../../../../../../etc/passwd").is_err());
        assert!(DicomId::is_valid_prefix(b"02aa804e-bde0"));
        assert!(!DicomId::is_valid_prefix(good));
        assert!(!DicomId::is_valid_prefix(b"02aa804e-bde0afdd-112c0b34-7bc16630-4e384014_calibration"));
    }

    #[test]
    fn reflacx_ids() {
        assert!(ReflacxId::parse(b"P102R108387").is_ok());
        assert!(ReflacxId::parse(b"P300R98407").is_err());
        assert!(ReflacxId::parse(b"../P300R984070").is_err());
    }
}

/// Hashing for numeric ids in hot lookups: ids are trusted and small, so SipHash's protection
/// against chosen keys costs time (one lookup per row of a shuffled table) for nothing.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100000001b3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (v ^ (v >> 29)).wrapping_mul(0x9E3779B97F4A7C15);
    }
}

pub(crate) type IdBuildHasher = BuildHasherDefault<IdHasher>;
