//! A problem with one field of one object ([`FieldError`]) and the field paths it names
//! (`spec.networks[0].ip`, `spec.env.LOG_LEVEL`).
//!
//! Its own module, below every checker (`validate`, `limits`, `hostports`, `hardening`), so
//! the checkers share it without depending on each other; `validate` re-exports it.

use serde::{Deserialize, Serialize};

/// One thing wrong with one object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FieldError {
    /// Path of the field, `spec.networks[0].ip`; empty when the object as a whole is wrong.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// The path of map entry `key` under `parent`: `spec.env.LOG_LEVEL`, or
/// `metadata.labels["topo.dev/derived-from"]` when the key is not a plain word. The manifest
/// locator builds paths the same way, so these paths can be located in a file.
pub fn field_key(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (parent.is_empty(), plain) {
        (true, true) => key.to_string(),
        (false, true) => format!("{parent}.{key}"),
        (_, false) => format!("{parent}[{key:?}]"),
    }
}

/// The path of item `i` of the sequence at `parent`: `spec.networks[0]`.
pub fn field_index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}
