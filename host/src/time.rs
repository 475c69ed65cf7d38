//! Time as the host owns it: clocks, watermarks and timers. Guests have no
//! clock: they ask the host.

mod clock;
pub mod timers;
pub mod watermarks;

pub use clock::{Clock, ManualClock, SystemClock};
pub use timers::{TimeDomain, Timer, TimerService};
pub use watermarks::{IdleTracker, PeriodicWatermarks, WatermarkValve};
