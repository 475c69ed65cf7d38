//! Test guest: a map that passes records through and misbehaves on the
//! record whose value equals `on`, in the way `act` names:
//!
//! - `loop`: spins forever (the host's epoch deadline must stop it);
//! - `alloc`: allocates 1 MiB after 1 MiB forever (the memory cap must stop it);
//! - `recurse`: recurses without end (a stack-overflow trap);
//! - `trap`: panics (a trap in the middle of a batch);
//! - `log-flood`: writes `lines` log lines (default 10,000) for that record,
//!   and one per other record (the rate limit must cut them);
//! - `emit`: emits a record of `bytes` bytes instead (the host's record-size
//!   limit must stop it);
//! - `log`: writes `message` as one warning (newlines and all: the host must
//!   escape them);
//! - `slow`: spins `spin` iterations on every record (a slow consumer).

use sluice_guest::{Error, Map, Output, Record};

#[derive(serde::Deserialize)]
struct Config {
    on: String,
    act: String,
    #[serde(default = "default_lines")]
    lines: u32,
    #[serde(default)]
    bytes: usize,
    #[serde(default)]
    message: String,
    #[serde(default)]
    spin: u64,
}

fn default_lines() -> u32 {
    10_000
}

struct Hostile(Config);

/// Recursion whose frames live in wasm locals only (no linear-memory
/// stack), so it exhausts the engine's stack rather than the guest's heap.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let next = std::hint::black_box(depth.wrapping_add(1));
    if next == 0 {
        return 0;
    }
    recurse(next).rotate_left(1) ^ depth
}

impl Map for Hostile {
    fn open(config: &str) -> Result<Self, Error> {
        Ok(Hostile(serde_json::from_str(config)?))
    }

    fn map<'a>(&mut self, record: Record<'a>) -> Result<Output<'a>, Error> {
        let v = record.value_str()?;
        if v == self.0.on {
            match self.0.act.as_str() {
                "loop" => {
                    let mut x = 0u64;
                    loop {
                        x = std::hint::black_box(x.wrapping_add(1));
                    }
                }
                "alloc" => {
                    let mut hoard: Vec<Vec<u8>> = Vec::new();
                    loop {
                        hoard.push(vec![1u8; 1 << 20]);
                        std::hint::black_box(&hoard);
                    }
                }
                "recurse" => {
                    std::hint::black_box(recurse(0));
                }
                "trap" => panic!("hostile guest traps on {v:?}"),
                "log" => sluice_guest::log::warn(&self.0.message),
                "emit" => return Ok(sluice_guest::Output::value(vec![b'x'; self.0.bytes])),
                "log-flood" => {
                    for i in 0..self.0.lines {
                        sluice_guest::log::info(&format!("flood line {i}"));
                    }
                }
                other => return Err(Error::new(format!("unknown act {other:?}"))),
            }
        } else if self.0.act == "slow" {
            let mut x = 0u64;
            for _ in 0..self.0.spin {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        } else if self.0.act == "log-flood" {
            sluice_guest::log::info(&format!("record {v}"));
        }
        Ok(record.to_output())
    }
}

sluice_guest::export_map!(Hostile);
