//! JSON text in and out, through one serializer and one parser: every `Value` the crate
//! writes or reads goes through these two, so the binary carries one copy of serde_json's
//! code for each (its `Display`, `from_str` and `json!` with values inside would each bring
//! another, about 16 KB of the stripped hello in all).

use serde_json::Value;

/// The compact JSON text of `value`.
pub(crate) fn text(value: &Value) -> String {
    let mut out = Vec::with_capacity(64);
    // A `Value` always serialises (its map keys are strings) and into a `Vec` writing cannot
    // fail, so there is no error to report here.
    let _ = serde_json::to_writer(&mut out, value);
    // serde_json writes UTF-8 only (strings are escaped from `String`s).
    String::from_utf8(out).unwrap_or_default()
}

/// The `Value` of a JSON text.
pub(crate) fn parse(text: impl AsRef<[u8]>) -> serde_json::Result<Value> {
    serde_json::from_slice(text.as_ref())
}
