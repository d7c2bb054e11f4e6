//! Gzip decoding of input tables: every member of a multi-member file, CRC-32 and length checked.
//!
//! Two backends, chosen at build time: flate2 on zlib-rs (pure Rust, always available) and, with
//! the cargo feature `isal`, Intel's ISA-L, whose inflate is 1.4–1.6x faster here (docs/PERFORMANCE.md).
//! Both read the same files and fail on the same defects.

use std::io::{self, BufRead, Read};

#[cfg(feature = "isal")]
mod isal;

/// Which inflate this binary was built with, for logs and benchmark output.
pub const BACKEND: &str = if cfg!(feature = "isal") { "isal" } else { "zlib-rs" };

/// Decodes every gzip member of `input` to its end.
pub fn decoder<R: BufRead + Send + 'static>(input: R) -> io::Result<Box<dyn Read + Send>> {
    #[cfg(feature = "isal")]
    {
        Ok(Box::new(isal::MultiGzDecoder::new(input)?))
    }
    #[cfg(not(feature = "isal"))]
    {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(input)))
    }
}
