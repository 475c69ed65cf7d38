//! `uppercase`: a stateless map that upper-cases ASCII letters of the value,
//! keeping key and timestamp. The `map` benchmark's operator.

use sluice_guest::{Error, Map, Output, Record};

struct Uppercase;

impl Map for Uppercase {
    fn open(_config: &str) -> Result<Self, Error> {
        Ok(Uppercase)
    }

    fn map<'a>(&mut self, record: Record<'a>) -> Result<Output<'a>, Error> {
        Ok(record.with_value(record.value.to_ascii_uppercase()))
    }
}

sluice_guest::export_map!(Uppercase);
