//! Test guest: a punctuated watermark generator. A record whose value is
//! exactly `!`, or holds the JSON string `"!"` (a CSV or JSON line with a `!`
//! field), emits a watermark at its timestamp after it (without a timestamp
//! it is ignored, with a warning); other records emit none.

use sluice_guest::{Error, Punctuated, Record, log};

struct Punctuator;

impl Punctuated for Punctuator {
    fn open(_config: &str) -> Result<Self, Error> {
        Ok(Punctuator)
    }

    fn on_record(&mut self, record: &Record<'_>) -> Option<i64> {
        if record.value != b"!" && !record.value.windows(3).any(|w| w == b"\"!\"") {
            return None;
        }
        if record.timestamp.is_none() {
            log::warn("a `!` record without a timestamp: no watermark");
        }
        record.timestamp
    }
}

sluice_guest::export_punctuated!(Punctuator);
