//! The record scanner: finds RFC 4180 record and field boundaries in raw bytes.
//!
//! This is the hot loop. It never copies or decodes a field: it reports where each record starts
//! and ends in the buffer, how many fields it has and where one chosen field (the routing key)
//! lies, so the writer can copy the record verbatim (quoting, spacing and invalid UTF-8 included).
//! Line terminators may be LF or CRLF; quoted fields may hold commas, doubled quotes and newlines.

/// Byte range `[start, end)` inside a batch buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    pub(crate) start: u32,
    pub(crate) end: u32,
}

impl Span {
    /// The bytes of `buf` this span covers.
    pub fn slice(self, buf: &[u8]) -> &[u8] {
        &buf[self.start as usize..self.end as usize]
    }
    /// A field or record with no bytes.
    pub fn is_empty(self) -> bool {
        self.start == self.end
    }
}

/// One record found by [`Scanner::scan`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScannedRecord {
    /// The record's bytes, without its line terminator.
    pub span: Span,
    /// How many fields the record has.
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
    /// A scanner that also extracts field `key_col` (unquoted) of each record.
    pub fn new(key_col: Option<usize>) -> Self {
        let key_col = key_col.map_or(NO_KEY, |k| u32::try_from(k).unwrap_or(NO_KEY));
        Self { key_col }
    }

    /// Scans the complete records of `buf`, calling `out` for each, and returns how many bytes
    /// were consumed. A record cut off by the end of `buf` is left for the next call unless
    /// `eof` is set, in which case it is the last record (flagged when inside quotes).
    pub fn scan(&self, buf: &[u8], eof: bool, mut out: impl FnMut(ScannedRecord)) -> usize {
        let mut blocks = Blocks::default();
        let mut pos = 0;
        while pos < buf.len() {
            let found = match self.scan_plain(buf, pos, eof, &mut blocks) {
                Line::Plain(record, next) => Some((record, next)),
                Line::Quoted => self.scan_quoted(buf, pos, eof, &mut blocks),
                Line::Incomplete => None,
            };
            match found {
                Some((record, next)) => {
                    out(record);
                    pos = next;
                }
                None => break,
            }
        }
        pos
    }

    /// The fast path, the common case: a line without any quote. One pass over 64-byte blocks
    /// of bit masks (line feeds, commas, quotes; each block's masks computed once and shared by
    /// the lines in it) gives the line end, the field count and the key field, with no per-byte
    /// branching. A line holding a quote is handed to the state machine.
    #[inline]
    fn scan_plain(&self, buf: &[u8], start: usize, eof: bool, blocks: &mut Blocks) -> Line {
        let mut base = start & !63;
        // Bits of the first block that lie before `start` are not this line's.
        let mut live = !0u64 << (start - base);
        let mut commas: u32 = 0;
        let mut key_start = (self.key_col == 0).then_some(start);
        let mut key_end = None;
        let (mut end, next) = loop {
            if base >= buf.len() {
                if !eof {
                    return Line::Incomplete;
                }
                break (buf.len(), buf.len());
            }
            let m = blocks.at(buf, base);
            let line_feeds = m.line_feeds & live;
            // Everything below the first line feed (all of the block when there is none).
            let mine = live & line_feeds.wrapping_sub(1) & !line_feeds;
            if m.quotes & mine != 0 {
                return Line::Quoted;
            }
            let block_commas = m.commas & mine;
            let count = block_commas.count_ones();
            if self.key_col != NO_KEY && key_end.is_none() && commas + count >= self.key_col {
                // The key field starts or ends in this block: walk its commas.
                let mut rest = block_commas;
                let mut seen = commas;
                while rest != 0 {
                    let at = base + rest.trailing_zeros() as usize;
                    seen += 1;
                    if seen == self.key_col {
                        key_start = Some(at + 1);
                    } else if seen == self.key_col + 1 {
                        key_end = Some(at);
                        break;
                    }
                    rest &= rest - 1;
                }
            }
            commas += count;
            if line_feeds != 0 {
                let at = base + line_feeds.trailing_zeros() as usize;
                break (at, at + 1);
            }
            base += 64;
            live = !0;
        };
        if end > start && buf[end - 1] == b'\r' {
            end -= 1;
        }
        let mut record = ScannedRecord { fields: commas + 1, ..Default::default() };
        record.span = Span { start: start as u32, end: end as u32 };
        if let Some(from) = key_start {
            let to = key_end.unwrap_or(end);
            record.key = Span { start: from.min(to) as u32, end: to as u32 };
        }
        Line::Plain(record, next)
    }

    /// The full RFC 4180 state machine, for records holding quotes. Outside quotes it visits only
    /// the commas, line feeds and quotes (from the block masks); inside, it jumps to the next quote.
    fn scan_quoted(&self, buf: &[u8], start: usize, eof: bool, blocks: &mut Blocks) -> Option<(ScannedRecord, usize)> {
        let n = buf.len();
        let mut rec = ScannedRecord::default();
        let mut field: u32 = 0;
        let mut field_start = start;
        let mut field_quoted = false;
        let mut i = start;
        loop {
            // Unquoted bytes: stop at the next comma, quote or line feed.
            let mut entered_quotes = false;
            'blocks: while i < n {
                let base = i & !63;
                let m = blocks.at(buf, base);
                let mut special = (m.commas | m.line_feeds | m.quotes) & (!0u64 << (i - base));
                while special != 0 {
                    // Zero padding past the end matches nothing, so `at < n`.
                    let at = base + special.trailing_zeros() as usize;
                    special &= special - 1;
                    match buf[at] {
                        b',' => {
                            if field == self.key_col {
                                rec.key = key_span(buf, field_start, at, field_quoted);
                            }
                            field += 1;
                            field_start = at + 1;
                            field_quoted = false;
                        }
                        b'\n' => {
                            let end = if at > start && buf[at - 1] == b'\r' { at - 1 } else { at };
                            let rec = finish(rec, buf, start, end, field, field_start, field_quoted, self.key_col);
                            return Some((rec, at + 1));
                        }
                        // A quote opens a quoted field only at the field's start; elsewhere it
                        // is a literal character.
                        _ if at == field_start => {
                            field_quoted = true;
                            entered_quotes = true;
                            i = at + 1;
                            break 'blocks;
                        }
                        _ => {}
                    }
                }
                i = base + 64;
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

/// What the fast path found at a line start.
enum Line {
    Plain(ScannedRecord, usize),
    /// The line holds a quote: the state machine decides.
    Quoted,
    /// No line end before the end of the buffer (and more input is coming).
    Incomplete,
}

/// Bit `i` of each mask is set when byte `i` of a 64-byte block is that character.
#[derive(Debug, Clone, Copy, Default)]
struct Masks {
    line_feeds: u64,
    commas: u64,
    quotes: u64,
}

/// The masks of the block last asked for: lines are shorter than blocks, so most lookups hit.
#[derive(Debug, Default)]
struct Blocks {
    base: Option<usize>,
    masks: Masks,
}

impl Blocks {
    #[inline]
    fn at(&mut self, buf: &[u8], base: usize) -> Masks {
        if self.base != Some(base) {
            self.base = Some(base);
            self.masks = match buf[base..].first_chunk::<64>() {
                Some(block) => masks_of(block),
                None => {
                    // The last, partial block: zero padding matches none of the three characters.
                    let mut block = [0u8; 64];
                    block[..buf.len() - base].copy_from_slice(&buf[base..]);
                    masks_of(&block)
                }
            };
        }
        self.masks
    }
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn masks_of(block: &[u8; 64]) -> Masks {
    use std::arch::x86_64::{__m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8};
    let mut m = Masks::default();
    // SAFETY: SSE2 is part of the x86_64 baseline; each unaligned 16-byte load lies inside `block`.
    unsafe {
        let (lf, comma, quote) = (_mm_set1_epi8(b'\n' as i8), _mm_set1_epi8(b',' as i8), _mm_set1_epi8(b'"' as i8));
        for i in 0..4 {
            let v = _mm_loadu_si128(block.as_ptr().add(16 * i).cast::<__m128i>());
            let bits = |c| u64::from(_mm_movemask_epi8(_mm_cmpeq_epi8(v, c)) as u16) << (16 * i);
            m.line_feeds |= bits(lf);
            m.commas |= bits(comma);
            m.quotes |= bits(quote);
        }
    }
    m
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn masks_of(block: &[u8; 64]) -> Masks {
    let mut m = Masks::default();
    for (i, &b) in block.iter().enumerate() {
        m.line_feeds |= u64::from(b == b'\n') << i;
        m.commas |= u64::from(b == b',') << i;
        m.quotes |= u64::from(b == b'"') << i;
    }
    m
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

/// Re-encodes decoded fields as one CSV record (quoting only where needed).
pub fn encode_record(fields: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_field(&mut out, f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (record bytes, fields, key bytes, newlines, unterminated)
    type Scanned = (Vec<u8>, u32, Vec<u8>, u32, bool);

    fn scan_all(input: &[u8], key: Option<usize>) -> Vec<Scanned> {
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
