//! The snapshot file format: one file per operator subtask, the same for
//! checkpoints and savepoints (documented in `docs/checkpoints.md`).
//!
//! ```text
//! file    := "SLUICEST" u32:version zstd(payload)
//! payload := u32:n (u32:len name){n}                      state names
//!            u32:n (u32:group u64:len block){n}           key groups, ascending
//!            u32:n (u32:len name u64:len bytes){n}        operator state
//! block   := entry*
//! entry   := 0 u32:state u32:len key u32:len user-key u32:len value
//!          | 1 u8:domain i64:timestamp u32:len key u32:len namespace
//! ```
//!
//! Integers are little-endian. Within a key group, timers keep their firing
//! order. The synchronous part of a snapshot ([`SnapshotWriter`]) copies the
//! state into an uncompressed payload; compressing, checksumming and writing
//! it ([`encode_file`]) happen off the task's thread.

use std::collections::BTreeMap;

use crate::state::{HeapKeyedState, KeyGroup, KeyGroupRange};
use crate::time::{TimeDomain, Timer, TimerService};

/// First bytes of every state file.
pub const MAGIC: &[u8; 8] = b"SLUICEST";
/// The version written.
pub const VERSION: u32 = 1;
/// zstd level: fast; state compresses well at any level.
const ZSTD_LEVEL: i32 = 1;

/// A state file that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FormatError(pub String);

const TAG_STATE: u8 = 0;
const TAG_TIMER: u8 = 1;

/// Builds the payload of one operator subtask's snapshot.
#[derive(Debug, Default)]
pub struct SnapshotWriter {
    names: Vec<String>,
    groups: BTreeMap<u32, Vec<u8>>,
    operator: Vec<(String, Vec<u8>)>,
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

impl SnapshotWriter {
    /// An empty snapshot.
    pub fn new() -> Self {
        Self::default()
    }

    /// Copy every entry of `backend`, group by group.
    pub fn keyed_state(&mut self, backend: &HeapKeyedState) {
        let range = backend.key_group_range();
        if range.is_empty() {
            return;
        }
        // Backend state id -> index in this snapshot's names.
        let mut index: Vec<Option<u32>> = Vec::new();
        for g in range.start..=range.end {
            let mut block = self.groups.remove(&g).unwrap_or_default();
            backend.for_each_in_group(KeyGroup(g), |key, id, user_key, value| {
                let slot = id as usize;
                if index.len() <= slot {
                    index.resize(slot + 1, None);
                }
                let i = match index[slot] {
                    Some(i) => i,
                    None => {
                        let name = backend.state_name(id).unwrap_or_default();
                        let i = match self.names.iter().position(|n| n == name) {
                            Some(i) => i as u32,
                            None => {
                                self.names.push(name.to_owned());
                                (self.names.len() - 1) as u32
                            }
                        };
                        index[slot] = Some(i);
                        i
                    }
                };
                block.reserve(17 + key.len() + user_key.len() + value.len());
                block.push(TAG_STATE);
                block.extend_from_slice(&i.to_le_bytes());
                put_bytes(&mut block, key);
                put_bytes(&mut block, user_key);
                put_bytes(&mut block, value);
            });
            if !block.is_empty() {
                self.groups.insert(g, block);
            }
        }
    }

    /// Copy every timer, into the group of its key.
    pub fn timers(&mut self, timers: &TimerService, max_parallelism: u32) {
        for domain in [TimeDomain::EventTime, TimeDomain::ProcessingTime] {
            for t in timers.iter(domain) {
                let block = self.groups.entry(KeyGroup::of(&t.key, max_parallelism).0).or_default();
                block.push(TAG_TIMER);
                block.push(match domain {
                    TimeDomain::EventTime => 0,
                    TimeDomain::ProcessingTime => 1,
                });
                block.extend_from_slice(&t.timestamp.to_le_bytes());
                put_bytes(block, &t.key);
                put_bytes(block, &t.namespace);
            }
        }
    }

    /// Add a named piece of non-keyed state (a source position, say).
    pub fn operator_state(&mut self, name: &str, bytes: Vec<u8>) {
        self.operator.push((name.to_owned(), bytes));
    }

    /// The uncompressed payload.
    pub fn finish(self) -> Vec<u8> {
        let size: usize = self.groups.values().map(|b| b.len() + 12).sum::<usize>() + 64;
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(&(self.names.len() as u32).to_le_bytes());
        for n in &self.names {
            put_bytes(&mut out, n.as_bytes());
        }
        out.extend_from_slice(&(self.groups.len() as u32).to_le_bytes());
        for (g, block) in &self.groups {
            out.extend_from_slice(&g.to_le_bytes());
            out.extend_from_slice(&(block.len() as u64).to_le_bytes());
            out.extend_from_slice(block);
        }
        out.extend_from_slice(&(self.operator.len() as u32).to_le_bytes());
        for (n, b) in &self.operator {
            put_bytes(&mut out, n.as_bytes());
            out.extend_from_slice(&(b.len() as u64).to_le_bytes());
            out.extend_from_slice(b);
        }
        out
    }
}

/// Compress a payload into a state file.
pub fn encode_file(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() / 3 + 16);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    // Compressing from memory into memory cannot fail.
    match zstd::bulk::compress(payload, ZSTD_LEVEL) {
        Ok(z) => out.extend_from_slice(&z),
        Err(e) => unreachable!("zstd compress into memory: {e}"),
    }
    out
}

/// One entry of a key group block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item<'a> {
    /// A keyed state entry.
    State {
        /// The state's index in the snapshot's names.
        index: usize,
        /// The state's name.
        state: &'a str,
        /// The record key.
        key: &'a [u8],
        /// The user key.
        user_key: &'a [u8],
        /// The value.
        value: &'a [u8],
    },
    /// A timer.
    Timer {
        /// Its domain.
        domain: TimeDomain,
        /// Its key, namespace and time.
        timer: Timer,
    },
}

/// A decoded state file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedSnapshot {
    names: Vec<String>,
    payload: Vec<u8>,
    /// (group, start, end) of each block in `payload`.
    blocks: Vec<(u32, usize, usize)>,
    operator: Vec<(String, Vec<u8>)>,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(FormatError(format!("truncated payload at byte {}", self.pos)));
        };
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap_or_default()))
    }
    fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap_or_default()))
    }
    fn bytes(&mut self) -> Result<&'a [u8], FormatError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

impl DecodedSnapshot {
    /// Decode a state file.
    pub fn decode(file: &[u8]) -> Result<Self, FormatError> {
        if file.len() < 12 || &file[..8] != MAGIC {
            return Err(FormatError("not a Sluice state file (bad magic)".into()));
        }
        let version = u32::from_le_bytes(file[8..12].try_into().unwrap_or_default());
        if version != VERSION {
            return Err(FormatError(format!("unsupported state file version {version}")));
        }
        let payload = zstd::stream::decode_all(&file[12..]).map_err(|e| FormatError(format!("decompressing: {e}")))?;
        Self::from_payload(payload)
    }

    /// Parse an uncompressed payload.
    pub fn from_payload(payload: Vec<u8>) -> Result<Self, FormatError> {
        let mut r = Reader { buf: &payload, pos: 0 };
        let n = r.u32()?;
        let mut names = Vec::new();
        for _ in 0..n {
            let b = r.bytes()?;
            names.push(String::from_utf8(b.to_vec()).map_err(|_| FormatError("a state name is not UTF-8".into()))?);
        }
        let n = r.u32()?;
        let mut blocks = Vec::new();
        for _ in 0..n {
            let g = r.u32()?;
            let len = r.u64()? as usize;
            let start = r.pos;
            r.take(len)?;
            blocks.push((g, start, start + len));
        }
        let n = r.u32()?;
        let mut operator = Vec::new();
        for _ in 0..n {
            let name = String::from_utf8(r.bytes()?.to_vec()).map_err(|_| FormatError("an operator state name is not UTF-8".into()))?;
            let len = r.u64()? as usize;
            operator.push((name, r.take(len)?.to_vec()));
        }
        if r.pos != payload.len() {
            return Err(FormatError(format!("{} trailing bytes", payload.len() - r.pos)));
        }
        let me = DecodedSnapshot {
            names,
            payload,
            blocks,
            operator,
        };
        // Validate every entry now, so restoring cannot fail half-way.
        for &(g, ..) in &me.blocks {
            for item in me.items(g) {
                item?;
            }
        }
        Ok(me)
    }

    /// Key groups present, ascending.
    pub fn groups(&self) -> impl Iterator<Item = u32> + '_ {
        self.blocks.iter().map(|b| b.0)
    }

    /// A piece of operator state by name.
    pub fn operator_state(&self, name: &str) -> Option<&[u8]> {
        self.operator.iter().find(|(n, _)| n == name).map(|(_, b)| &b[..])
    }

    /// The entries of key group `group`.
    pub fn items(&self, group: u32) -> impl Iterator<Item = Result<Item<'_>, FormatError>> + '_ {
        let block = self
            .blocks
            .iter()
            .find(|b| b.0 == group)
            .map_or(&[][..], |&(_, s, e)| &self.payload[s..e]);
        let mut r = Reader { buf: block, pos: 0 };
        std::iter::from_fn(move || {
            if r.pos >= r.buf.len() {
                return None;
            }
            Some(self.item(&mut r))
        })
    }

    fn item<'a>(&'a self, r: &mut Reader<'a>) -> Result<Item<'a>, FormatError> {
        match r.u8()? {
            TAG_STATE => {
                let i = r.u32()? as usize;
                let state = self
                    .names
                    .get(i)
                    .ok_or_else(|| FormatError(format!("state index {i} out of range")))?;
                Ok(Item::State {
                    index: i,
                    state,
                    key: r.bytes()?,
                    user_key: r.bytes()?,
                    value: r.bytes()?,
                })
            }
            TAG_TIMER => {
                let domain = match r.u8()? {
                    0 => TimeDomain::EventTime,
                    1 => TimeDomain::ProcessingTime,
                    d => return Err(FormatError(format!("unknown timer domain {d}"))),
                };
                let timestamp = i64::from_le_bytes(r.take(8)?.try_into().unwrap_or_default());
                Ok(Item::Timer {
                    domain,
                    timer: Timer {
                        key: r.bytes()?.to_vec(),
                        namespace: r.bytes()?.to_vec(),
                        timestamp,
                    },
                })
            }
            t => Err(FormatError(format!("unknown entry tag {t}"))),
        }
    }
}

/// Put the keyed state and timers of the groups in `range`, from the
/// snapshots of all the old subtasks of an operator, into a new subtask.
pub fn restore_keyed(
    snapshots: &[std::sync::Arc<DecodedSnapshot>],
    range: KeyGroupRange,
    backend: &mut HeapKeyedState,
    mut timers: Option<&mut TimerService>,
) -> Result<(), FormatError> {
    for snap in snapshots {
        let mut ids: Vec<Option<u32>> = vec![None; snap.names.len()];
        for g in snap.groups().filter(|&g| range.contains(KeyGroup(g))) {
            for item in snap.items(g) {
                match item? {
                    Item::State {
                        index: i,
                        state,
                        key,
                        user_key,
                        value,
                    } => {
                        let id = match ids[i] {
                            Some(id) => id,
                            None => {
                                let id = backend.declare(state).map_err(|e| FormatError(e.to_string()))?;
                                ids[i] = Some(id);
                                id
                            }
                        };
                        backend
                            .put(KeyGroup(g), key, id, user_key, value)
                            .map_err(|e| FormatError(e.to_string()))?;
                    }
                    Item::Timer { domain, timer } => match timers.as_deref_mut() {
                        Some(t) => t.register(domain, timer),
                        None => return Err(FormatError("the snapshot has timers but the operator keeps none".into())),
                    },
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_round_trips_and_damage_is_detected() {
        let range = KeyGroupRange::for_subtask(16, 1, 0);
        let mut b = HeapKeyedState::new(range);
        let id = b.declare("count").unwrap();
        let mut timers = TimerService::default();
        for i in 0..100u32 {
            let key = format!("k{i}");
            b.put(KeyGroup::of(key.as_bytes(), 16), key.as_bytes(), id, b"", &i.to_le_bytes())
                .unwrap();
            timers.register(
                TimeDomain::EventTime,
                Timer {
                    key: key.into_bytes(),
                    namespace: vec![1],
                    timestamp: i64::from(i),
                },
            );
        }
        let mut w = SnapshotWriter::new();
        w.keyed_state(&b);
        w.timers(&timers, 16);
        w.operator_state("position", vec![7, 8]);
        let file = encode_file(&w.finish());
        let d = std::sync::Arc::new(DecodedSnapshot::decode(&file).unwrap());
        assert_eq!(d.operator_state("position"), Some(&[7u8, 8][..]));
        assert!(d.groups().collect::<Vec<_>>().windows(2).all(|w| w[0] < w[1]));
        let mut b2 = HeapKeyedState::new(range);
        let mut t2 = TimerService::default();
        restore_keyed(&[d], range, &mut b2, Some(&mut t2)).unwrap();
        assert_eq!(b2.key_count(), 100);
        assert_eq!(t2.len(TimeDomain::EventTime), 100);
        let id2 = b2.declare("count").unwrap();
        assert_eq!(
            b2.get(KeyGroup::of(b"k42", 16), b"k42", id2, b"").unwrap(),
            Some(&42u32.to_le_bytes()[..])
        );
        let mut bad = file.clone();
        bad.truncate(file.len() - 5);
        assert!(DecodedSnapshot::decode(&bad).is_err());
        assert!(DecodedSnapshot::decode(b"not a state file").is_err());
    }
}
