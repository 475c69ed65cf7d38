//! Time as the host owns it. Guests have no clock: they ask the host.

mod clock;

pub use clock::{Clock, ManualClock, SystemClock};
