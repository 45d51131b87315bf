//! JSON text in and out, through one serializer and one parser: every `Value` the crate
//! writes or reads goes through these two, so the binary carries one copy of serde_json's
//! code for each (its `Display`, `from_str` and `json!` with values inside would each bring
//! another: 30 KB of the stripped hello in all).

use serde_json::Value;

/// The compact JSON text of `value`.
pub(crate) fn text(value: &Value) -> String {
    // serde_json fails only on a map key that is not a string or a writer that fails; a
    // `Value`'s keys are `String`s and a `String` takes any length.
    serde_json::to_string(value).expect("a JSON Value always serialises into a String")
}

/// The `Value` of a JSON text.
pub(crate) fn parse(text: impl AsRef<[u8]>) -> serde_json::Result<Value> {
    serde_json::from_slice(text.as_ref())
}
