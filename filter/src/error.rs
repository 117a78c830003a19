//! The configuration error every feature's compile step returns. It sits below every
//! feature (it imports nothing of the crate), so no feature reaches up to the top-level
//! `Settings` for it.

use std::fmt;

/// A configuration error, naming the field (`auth.timeout_ms`, `public_paths[2]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { field: field.into(), message: message.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() || self.field == "." {
            write!(f, "invalid plugin configuration: {}", self.message)
        } else {
            write!(f, "invalid plugin configuration: {}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}
