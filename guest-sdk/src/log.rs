//! Logging through the host. Lines are tagged by the host with job, operator
//! and subtask, and rate-limited: past the limit they are dropped and counted.
//!
//! ```ignore
//! sluice_guest::log::info("opened");
//! ```

use crate::__private::imports::sluice::udf::log::{self as host, Level};

/// Log at trace level.
pub fn trace(message: &str) {
    host::log(Level::Trace, message);
}

/// Log at debug level.
pub fn debug(message: &str) {
    host::log(Level::Debug, message);
}

/// Log at info level.
pub fn info(message: &str) {
    host::log(Level::Info, message);
}

/// Log at warn level.
pub fn warn(message: &str) {
    host::log(Level::Warn, message);
}

/// Log at error level.
pub fn error(message: &str) {
    host::log(Level::Error, message);
}

/// Route panic messages to the host's log before the trap, so the host can
/// say why an instance died. Installed by every export's `open`.
pub(crate) fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        error(&format!("panic: {info}"));
    }));
}
