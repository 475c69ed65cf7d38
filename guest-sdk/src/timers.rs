//! Timers of a keyed process operator, owned by the host.
//!
//! A timer belongs to the key in scope when it is registered (the key of the
//! record, or of the timer, being handled) and is kept in host state, so it
//! survives a restart with the rest of the state. An event-time timer fires
//! once the watermark reaches its timestamp, a processing-time timer once the
//! host's clock does; either way the host calls
//! [`KeyedProcess::on_timer`](crate::KeyedProcess::on_timer) (or
//! [`CoKeyedProcess::on_timer`](crate::CoKeyedProcess::on_timer)) with the
//! timer's key in scope. A key has at most one timer per domain and
//! timestamp: registering it again is a no-op.
//!
//! ```ignore
//! use sluice_guest::timers;
//! // Inside `process`: call back one minute after this record's event time.
//! timers::register_event_time_timer(record.timestamp.unwrap_or(0) + 60_000)?;
//! ```

use serde::{Deserialize, Serialize};

use crate::__private::imports::sluice::udf::timers::{self as host, TimeDomain as HostDomain};
use crate::Error;

/// Which clock a timer follows.
///
/// Serializes (and parses, in a configuration) as `"event-time"` or
/// `"processing-time"`, its name in the WIT contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimeDomain {
    /// The watermark: the timer fires once the watermark reaches its timestamp.
    EventTime,
    /// The host's processing-time clock.
    ProcessingTime,
}

impl TimeDomain {
    /// The domain's name in the WIT contract: `event-time` or `processing-time`.
    pub fn as_str(self) -> &'static str {
        match self {
            TimeDomain::EventTime => "event-time",
            TimeDomain::ProcessingTime => "processing-time",
        }
    }

    pub(crate) fn to_host(self) -> HostDomain {
        match self {
            TimeDomain::EventTime => HostDomain::EventTime,
            TimeDomain::ProcessingTime => HostDomain::ProcessingTime,
        }
    }

    pub(crate) fn from_host(d: HostDomain) -> Self {
        match d {
            HostDomain::EventTime => TimeDomain::EventTime,
            HostDomain::ProcessingTime => TimeDomain::ProcessingTime,
        }
    }
}

/// A timer that fired, as given to `on_timer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timer {
    /// Its clock.
    pub domain: TimeDomain,
    /// Its timestamp, in milliseconds since the Unix epoch.
    pub timestamp: i64,
}

/// Register a timer of `domain` at `timestamp` (ms) for the key in scope.
/// Registering an existing timer again is a no-op. Fails when no key is in
/// scope (outside `process` and `on_timer`).
pub fn register(domain: TimeDomain, timestamp: i64) -> Result<(), Error> {
    crate::state::enter()?;
    host::register(domain.to_host(), timestamp).map_err(|e| Error::new(format!("cannot register a timer: {e}")))
}

/// Delete the timer of `domain` at `timestamp` (ms) of the key in scope.
/// Deleting a timer that does not exist is not an error.
pub fn delete(domain: TimeDomain, timestamp: i64) -> Result<(), Error> {
    crate::state::enter()?;
    host::delete(domain.to_host(), timestamp).map_err(|e| Error::new(format!("cannot delete a timer: {e}")))
}

/// Register an event-time timer at `timestamp` (ms) for the key in scope: it
/// fires once the watermark reaches `timestamp`.
pub fn register_event_time_timer(timestamp: i64) -> Result<(), Error> {
    register(TimeDomain::EventTime, timestamp)
}

/// Register a processing-time timer at `timestamp` (ms) for the key in scope:
/// it fires once the host's clock reaches `timestamp`.
pub fn register_processing_time_timer(timestamp: i64) -> Result<(), Error> {
    register(TimeDomain::ProcessingTime, timestamp)
}

/// Delete the event-time timer at `timestamp` of the key in scope, if any.
pub fn delete_event_time_timer(timestamp: i64) -> Result<(), Error> {
    delete(TimeDomain::EventTime, timestamp)
}

/// Delete the processing-time timer at `timestamp` of the key in scope, if any.
pub fn delete_processing_time_timer(timestamp: i64) -> Result<(), Error> {
    delete(TimeDomain::ProcessingTime, timestamp)
}
