//! What pandas wrote: profile `release` reproduces the released build's floats.

/// Python's `repr(float)` for the values this program writes: shortest round-trip, `.0` kept.
pub(crate) fn python_float_repr(v: f64) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    let s = format!("{v}");
    if s.contains('.') || s.contains('e') || s.contains("inf") {
        s
    } else {
        format!("{s}.0")
    }
}
