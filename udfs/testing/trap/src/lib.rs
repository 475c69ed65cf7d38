//! Test guest: a map that passes records through, but traps (panics) on the
//! record whose value equals `trap_on` from its config, and reports a record
//! error (a value, not a trap) for the value `fail_on`. With `only_attempt`
//! set it traps only on that attempt of the job (0: the first run), so a
//! restarted job gets past the record.

use sluice_guest::{Error, Map, Output, Record};

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Config {
    trap_on: Option<String>,
    fail_on: Option<String>,
    only_attempt: Option<u32>,
}

struct Trap(Config);

impl Map for Trap {
    fn open(config: &str) -> Result<Self, Error> {
        Ok(Trap(serde_json::from_str(config)?))
    }

    fn map<'a>(&mut self, record: Record<'a>) -> Result<Output<'a>, Error> {
        let v = record.value_str()?;
        if self.0.trap_on.as_deref() == Some(v) && self.0.only_attempt.is_none_or(|a| a == sluice_guest::time::attempt()) {
            panic!("asked to trap on {v:?}");
        }
        if self.0.fail_on.as_deref() == Some(v) {
            return Err(Error::new(format!("refusing record {v:?}")));
        }
        Ok(record.to_output())
    }
}

sluice_guest::export_map!(Trap);
