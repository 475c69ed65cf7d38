//! The error a UDF returns for one record it cannot process.

use std::fmt;

/// An expected failure of one record: the host routes it by the job's error
/// policy (skip and count, or fail the job). A bug should panic instead.
///
/// Converts from the usual suspects, so `?` works in a UDF:
///
/// ```
/// fn parse(v: &[u8]) -> Result<u64, sluice_guest::Error> {
///     Ok(std::str::from_utf8(v)?.trim().parse::<u64>().map_err(|e| e.to_string())?)
/// }
/// assert!(parse(b"12").is_ok());
/// assert_eq!(parse(b"x").unwrap_err().to_string(), "invalid digit found in string");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl Error {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Error(message.into())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for Error {
    fn from(s: String) -> Self {
        Error(s)
    }
}

impl From<&str> for Error {
    fn from(s: &str) -> Self {
        Error(s.to_owned())
    }
}

impl From<std::str::Utf8Error> for Error {
    fn from(e: std::str::Utf8Error) -> Self {
        Error(format!("value is not UTF-8: {e}"))
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error(format!("invalid JSON: {e}"))
    }
}

impl From<crate::state::StateError> for Error {
    fn from(e: crate::state::StateError) -> Self {
        Error(e.to_string())
    }
}

impl From<crate::nexmark::DecodeError> for Error {
    fn from(e: crate::nexmark::DecodeError) -> Self {
        Error::new(e.to_string())
    }
}
