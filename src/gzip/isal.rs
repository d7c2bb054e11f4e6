//! ISA-L's inflate behind `Read`, through the C face in `isal_shim.c`.

use std::ffi::{c_int, c_void};
use std::io::{self, BufRead, Read};
use std::ptr::NonNull;

extern "C" {
    fn mimic_eye_isal_new() -> *mut c_void;
    fn mimic_eye_isal_free(state: *mut c_void);
    fn mimic_eye_isal_reset(state: *mut c_void);
    fn mimic_eye_isal_inflate(
        state: *mut c_void,
        input: *const u8,
        in_len: *mut u32,
        out: *mut u8,
        out_len: *mut u32,
        finished: *mut c_int,
    ) -> c_int;
}

/// Decodes every gzip member of a `BufRead`, like flate2's `MultiGzDecoder`.
pub(crate) struct MultiGzDecoder<R> {
    input: R,
    state: NonNull<c_void>,
    at: Position,
}

/// Where the decoder stands between the file's members.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Position {
    /// Nothing read yet: an end of input here is an empty (so truncated) file.
    Start,
    /// A member has begun and its trailer has not been read yet.
    InMember,
    /// The last member ended: the input may end, or its next byte starts a new member.
    BetweenMembers,
}

// SAFETY: the state is owned by this value alone and ISA-L keeps no thread-local data.
unsafe impl<R: Send> Send for MultiGzDecoder<R> {}

impl<R: BufRead> MultiGzDecoder<R> {
    pub(crate) fn new(input: R) -> io::Result<Self> {
        // SAFETY: returns a fresh heap state or null.
        let state = NonNull::new(unsafe { mimic_eye_isal_new() })
            .ok_or_else(|| io::Error::new(io::ErrorKind::OutOfMemory, "cannot allocate the ISA-L inflate state"))?;
        Ok(Self { input, state, at: Position::Start })
    }
}

impl<R> Drop for MultiGzDecoder<R> {
    fn drop(&mut self) {
        // SAFETY: allocated by mimic_eye_isal_new, freed once.
        unsafe { mimic_eye_isal_free(self.state.as_ptr()) }
    }
}

fn corrupt(code: c_int) -> io::Error {
    let what = match code {
        -1 => "invalid deflate block",
        -2 => "invalid deflate symbol",
        -3 => "invalid back-reference distance",
        -4 => "invalid gzip header",
        -5 => "unsupported compression method",
        -6 => "gzip checksum or length mismatch",
        _ => "corrupt gzip stream",
    };
    io::Error::new(io::ErrorKind::InvalidData, format!("{what} (ISA-L code {code})"))
}

impl<R: BufRead> Read for MultiGzDecoder<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        // ISA-L counts in u32; a read asks for one chunk at most.
        let out_cap = out.len().min(u32::MAX as usize);
        loop {
            let input = self.input.fill_buf()?;
            if input.is_empty() {
                // No input at all, or a member cut short: the file is truncated.
                return match self.at {
                    Position::BetweenMembers => Ok(0),
                    Position::Start | Position::InMember => Err(io::ErrorKind::UnexpectedEof.into()),
                };
            }
            if self.at == Position::BetweenMembers {
                // SAFETY: state is live.
                unsafe { mimic_eye_isal_reset(self.state.as_ptr()) };
            }
            self.at = Position::InMember;
            let mut in_len = input.len().min(u32::MAX as usize) as u32;
            let mut out_len = out_cap as u32;
            let mut finished: c_int = 0;
            // SAFETY: the pointers and lengths describe live slices; ISA-L writes only within them.
            let code = unsafe {
                mimic_eye_isal_inflate(
                    self.state.as_ptr(),
                    input.as_ptr(),
                    &mut in_len,
                    out.as_mut_ptr(),
                    &mut out_len,
                    &mut finished,
                )
            };
            self.input.consume(in_len as usize);
            if code < 0 {
                return Err(corrupt(code));
            }
            if finished != 0 {
                self.at = Position::BetweenMembers;
            }
            if out_len > 0 {
                return Ok(out_len as usize);
            }
            if in_len == 0 && finished == 0 {
                // Input was offered and nothing moved: never spin.
                return Err(io::Error::new(io::ErrorKind::InvalidData, "gzip decoder made no progress"));
            }
        }
    }
}
