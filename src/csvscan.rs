//! The record scanner: finds RFC 4180 record and field boundaries in raw bytes.
//!
//! This is the hot loop. It never copies or decodes a field: it reports where each record starts
//! and ends in the buffer, how many fields it has and where one chosen field (the routing key)
//! lies, so the writer can copy the record verbatim (quoting, spacing and invalid UTF-8 included).
//! Line terminators may be LF or CRLF; quoted fields may hold commas, doubled quotes and newlines.

/// Byte range `[start, end)` inside a batch buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub fn slice(self, buf: &[u8]) -> &[u8] {
        &buf[self.start as usize..self.end as usize]
    }
    pub fn is_empty(self) -> bool {
        self.start == self.end
    }
}

/// One record found by [`Scanner::scan`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScannedRecord {
    /// The record's bytes, without its line terminator.
    pub span: Span,
    pub fields: u32,
    /// The key field's value with its surrounding quotes removed (empty when absent).
    pub key: Span,
    /// Line breaks inside quoted fields: the record spans `1 + newlines` physical lines.
    pub newlines: u32,
    /// The input ended inside a quoted field.
    pub unterminated: bool,
}

/// Scans records, remembering which field is the routing key.
#[derive(Debug, Clone, Copy)]
pub struct Scanner {
    key_col: u32,
}

const NO_KEY: u32 = u32::MAX;

impl Scanner {
    pub fn new(key_col: Option<usize>) -> Self {
        let key_col = key_col.map_or(NO_KEY, |k| u32::try_from(k).unwrap_or(NO_KEY));
        Self { key_col }
    }

    /// Scans the complete records of `buf`, calling `out` for each, and returns how many bytes
    /// were consumed. A record cut off by the end of `buf` is left for the next call unless
    /// `eof` is set, in which case it is the last record (flagged when inside quotes).
    pub fn scan(&self, buf: &[u8], eof: bool, mut out: impl FnMut(ScannedRecord)) -> usize {
        let mut pos = 0;
        while pos < buf.len() {
            match self.scan_one(buf, pos, eof) {
                Some((record, next)) => {
                    out(record);
                    pos = next;
                }
                None => break,
            }
        }
        pos
    }

    /// Scans one record starting at `start`; `None` when it is not complete in `buf`.
    #[inline]
    fn scan_one(&self, buf: &[u8], start: usize, eof: bool) -> Option<(ScannedRecord, usize)> {
        // Fast path, the common case: a line without any quote. The line end and the quote test
        // are SIMD searches (memchr), the comma count vectorises; no per-byte state machine.
        let rest = &buf[start..];
        let (line_len, next) = match memchr::memchr(b'\n', rest) {
            Some(i) => (i, start + i + 1),
            None if eof => (rest.len(), buf.len()),
            None => return None,
        };
        let line = &rest[..line_len];
        if memchr::memchr(b'"', line).is_none() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let fields = 1 + memchr::memchr_iter(b',', line).count() as u32;
            let mut rec = ScannedRecord { fields, ..Default::default() };
            rec.span = Span { start: start as u32, end: (start + line.len()) as u32 };
            if self.key_col < fields {
                let mut from = 0;
                let mut commas = memchr::memchr_iter(b',', line);
                for _ in 0..self.key_col {
                    from = commas.next().map_or(line.len(), |c| c + 1);
                }
                let to = commas.next().unwrap_or(line.len());
                rec.key = Span { start: (start + from) as u32, end: (start + to) as u32 };
            }
            return Some((rec, next));
        }
        self.scan_quoted(buf, start, eof)
    }

    /// The full RFC 4180 state machine, for records holding quotes.
    fn scan_quoted(&self, buf: &[u8], start: usize, eof: bool) -> Option<(ScannedRecord, usize)> {
        let n = buf.len();
        let mut rec = ScannedRecord::default();
        let mut field: u32 = 0;
        let mut field_start = start;
        let mut field_quoted = false;
        let mut i = start;
        loop {
            // Unquoted bytes: stop at the next comma, quote or line feed.
            let mut entered_quotes = false;
            while i < n {
                let b = buf[i];
                if b == b',' {
                    if field == self.key_col {
                        rec.key = key_span(buf, field_start, i, field_quoted);
                    }
                    field += 1;
                    field_start = i + 1;
                    field_quoted = false;
                } else if b == b'\n' {
                    let end = if i > start && buf[i - 1] == b'\r' { i - 1 } else { i };
                    return Some((finish(rec, buf, start, end, field, field_start, field_quoted, self.key_col), i + 1));
                } else if b == b'"' && i == field_start {
                    field_quoted = true;
                    entered_quotes = true;
                    i += 1;
                    break;
                }
                i += 1;
            }
            if !entered_quotes {
                if !eof {
                    return None;
                }
                let end = if n > start && buf[n - 1] == b'\r' { n - 1 } else { n };
                return Some((finish(rec, buf, start, end, field, field_start, field_quoted, self.key_col), n));
            }
            // Inside quotes: only a quote can end this state.
            loop {
                match memchr::memchr(b'"', &buf[i..]) {
                    None => {
                        if !eof {
                            return None;
                        }
                        rec.newlines += count_newlines(&buf[i..]);
                        rec.unterminated = true;
                        return Some((finish(rec, buf, start, n, field, field_start, false, self.key_col), n));
                    }
                    Some(k) => {
                        rec.newlines += count_newlines(&buf[i..i + k]);
                        i += k;
                        if i + 1 < n && buf[i + 1] == b'"' {
                            i += 2; // a doubled quote is a literal quote
                            continue;
                        }
                        if i + 1 >= n && !eof {
                            return None; // cannot tell a doubled quote from a closing one yet
                        }
                        i += 1; // closing quote
                        break;
                    }
                }
            }
        }
    }
}

#[inline]
fn count_newlines(bytes: &[u8]) -> u32 {
    memchr::memchr_iter(b'\n', bytes).count() as u32
}

#[inline]
fn key_span(buf: &[u8], start: usize, end: usize, quoted: bool) -> Span {
    let (mut s, mut e) = (start, end);
    if quoted && e >= s + 2 && buf[s] == b'"' && buf[e - 1] == b'"' {
        s += 1;
        e -= 1;
    }
    Span { start: s as u32, end: e as u32 }
}

#[allow(clippy::too_many_arguments)]
#[inline]
fn finish(
    mut rec: ScannedRecord,
    buf: &[u8],
    start: usize,
    end: usize,
    field: u32,
    field_start: usize,
    field_quoted: bool,
    key_col: u32,
) -> ScannedRecord {
    if field == key_col {
        rec.key = key_span(buf, field_start.min(end), end, field_quoted);
    }
    rec.fields = field + 1;
    rec.span = Span { start: start as u32, end: end as u32 };
    rec
}

/// Splits one record's bytes into decoded fields (quotes removed, doubled quotes undone).
/// Used for the small tables the linker reads, never on the hot path.
///
/// ```
/// use mimic_eye::csvscan::split_fields;
/// let fields = split_fields(b"1,\"Quiet, calm space\",\"say \"\"hi\"\"\",On ");
/// assert_eq!(fields, [&b"1"[..], b"Quiet, calm space", b"say \"hi\"", b"On "]);
/// ```
pub fn split_fields(record: &[u8]) -> Vec<Vec<u8>> {
    let mut fields = Vec::new();
    let mut cur = Vec::new();
    let mut i = 0;
    let mut at_start = true;
    let mut in_quotes = false;
    while i < record.len() {
        let b = record[i];
        if in_quotes {
            if b == b'"' {
                if record.get(i + 1) == Some(&b'"') {
                    cur.push(b'"');
                    i += 1;
                } else {
                    in_quotes = false;
                }
            } else {
                cur.push(b);
            }
        } else if b == b',' {
            fields.push(std::mem::take(&mut cur));
            at_start = true;
            i += 1;
            continue;
        } else if b == b'"' && at_start {
            in_quotes = true;
        } else {
            cur.push(b);
        }
        at_start = false;
        i += 1;
    }
    fields.push(cur);
    fields
}

/// Writes `value` as one CSV field, quoting only when needed (as pandas and the csv crate do).
pub fn write_field(out: &mut Vec<u8>, value: &[u8]) {
    let needs_quotes = value.iter().any(|&b| matches!(b, b',' | b'"' | b'\n' | b'\r'));
    if !needs_quotes {
        out.extend_from_slice(value);
        return;
    }
    out.push(b'"');
    for &b in value {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(input: &[u8], key: Option<usize>) -> Vec<(Vec<u8>, u32, Vec<u8>, u32, bool)> {
        let mut v = Vec::new();
        let used = Scanner::new(key).scan(input, true, |r| {
            v.push((r.span.slice(input).to_vec(), r.fields, r.key.slice(input).to_vec(), r.newlines, r.unterminated))
        });
        assert_eq!(used, input.len());
        v
    }

    #[test]
    fn quoted_commas_quotes_and_newlines_stay_in_one_record() {
        let input = b"a,b,c\r\n1,\"x, \"\"y\"\"\nz\",3\r\n\"7\",8,9";
        let recs = scan_all(input, Some(0));
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[1].0, b"1,\"x, \"\"y\"\"\nz\",3");
        assert_eq!(recs[1].1, 3);
        assert_eq!(recs[1].3, 1);
        assert_eq!(recs[2].2, b"7");
        assert_eq!(split_fields(&recs[1].0), vec![b"1".to_vec(), b"x, \"y\"\nz".to_vec(), b"3".to_vec()]);
    }

    #[test]
    fn incomplete_records_wait_for_more_input() {
        let input = b"1,2\n3,\"4";
        let mut n = 0;
        let used = Scanner::new(None).scan(input, false, |_| n += 1);
        assert_eq!((n, used), (1, 4));
        // A quote at the very end might be the first of a doubled pair.
        let input = b"1,\"2\"";
        assert_eq!(Scanner::new(None).scan(input, false, |_| ()), 0);
    }

    #[test]
    fn unterminated_quote_at_eof_is_flagged() {
        let recs = scan_all(b"1,\"abc\n", None);
        assert_eq!(recs.len(), 1);
        assert!(recs[0].4);
    }

    #[test]
    fn key_of_last_field_and_empty_key() {
        let recs = scan_all(b"a,10000032\n,\n", Some(1));
        assert_eq!(recs[0].2, b"10000032");
        assert_eq!(recs[1].2, b"");
        assert_eq!(recs[1].1, 2);
    }

    #[test]
    fn write_field_round_trips() {
        let mut out = Vec::new();
        write_field(&mut out, b"x, \"y\"");
        assert_eq!(out, b"\"x, \"\"y\"\"\"");
        assert_eq!(split_fields(&out), vec![b"x, \"y\"".to_vec()]);
    }
}
