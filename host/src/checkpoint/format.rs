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
//!
//! Decoding trusts nothing in the file, checksum or not: the payload is
//! decompressed by zstd's streaming decoder into a buffer capped at
//! [`DecodeBounds::max_payload_bytes`] (a frame declaring a larger size is
//! refused before it is decompressed), every count and length is checked
//! against the bytes left before anything is reserved, and restoring a
//! checkpoint also checks that each key group is one of the subtask's and
//! holds only keys that hash into it ([`KeyGroupBounds`]).

use std::collections::BTreeMap;
use std::io::Read;

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
                        let i = self.state_index(backend.state_name(id).unwrap_or_default());
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

    /// The index of state `name` in this snapshot's names, added if new.
    pub fn state_index(&mut self, name: &str) -> u32 {
        match self.names.iter().position(|n| n == name) {
            Some(i) => i as u32,
            None => {
                self.names.push(name.to_owned());
                (self.names.len() - 1) as u32
            }
        }
    }

    /// Add one state entry of key group `group`, under the state numbered
    /// by [`Self::state_index`] (state an operator keeps outside its
    /// backend, in typed tables).
    pub fn entry(&mut self, group: KeyGroup, state: u32, key: &[u8], user_key: &[u8], value: &[u8]) {
        let block = self.groups.entry(group.0).or_default();
        block.reserve(17 + key.len() + user_key.len() + value.len());
        block.push(TAG_STATE);
        block.extend_from_slice(&state.to_le_bytes());
        put_bytes(block, key);
        put_bytes(block, user_key);
        put_bytes(block, value);
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

/// Add a named piece of operator state to a finished payload (an
/// iteration head's log of in-flight feedback records, known only after
/// its snapshot was taken).
pub fn append_operator_state(payload: &mut Vec<u8>, name: &str, bytes: &[u8]) -> Result<(), FormatError> {
    let damaged = || FormatError("the payload to append to is cut short".into());
    let mut at = 0usize;
    let u32_at = |p: &[u8], at: usize| -> Option<u32> { Some(u32::from_le_bytes(p.get(at..at.checked_add(4)?)?.try_into().ok()?)) };
    let u64_at = |p: &[u8], at: usize| -> Option<u64> { Some(u64::from_le_bytes(p.get(at..at.checked_add(8)?)?.try_into().ok()?)) };
    let names = u32_at(payload, at).ok_or_else(damaged)?;
    at += 4;
    for _ in 0..names {
        at = at.saturating_add(4 + u32_at(payload, at).ok_or_else(damaged)? as usize);
    }
    let groups = u32_at(payload, at).ok_or_else(damaged)?;
    at = at.saturating_add(4);
    for _ in 0..groups {
        let len = usize::try_from(u64_at(payload, at.saturating_add(4)).ok_or_else(damaged)?).map_err(|_| damaged())?;
        at = at.saturating_add(12).saturating_add(len);
    }
    let count = u32_at(payload, at).ok_or_else(damaged)?;
    payload[at..at + 4].copy_from_slice(&(count + 1).to_le_bytes());
    put_bytes(payload, name.as_bytes());
    payload.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    payload.extend_from_slice(bytes);
    Ok(())
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

/// Most bytes a state file's payload may decompress to unless the caller
/// sets another limit ([`DecodeBounds::max_payload_bytes`]): 1 GiB. The
/// payload stays in memory until every subtask has taken its key groups, so
/// this is the memory one subtask's snapshot may claim on restore; a zstd
/// frame that would inflate past it (a "zstd bomb", whose checksum can be
/// perfectly valid) fails to decode instead of exhausting memory.
pub const DEFAULT_MAX_PAYLOAD_BYTES: u64 = 1 << 30;

/// The largest zstd window the decoder accepts, as a power of two: 2^27 =
/// 128 MiB, zstd's own default, stated here because it bounds the decoder's
/// memory whatever a frame header asks for ([`ZSTD_LEVEL`] writes windows of
/// at most 512 KiB).
const MAX_WINDOW_LOG: u32 = 27;

/// Most state names one snapshot may hold: 65 536. A job declares a handful
/// (a window five); the bound keeps a forged count from turning a few bytes
/// of payload into a large table.
pub const MAX_STATE_NAMES: u32 = 65_536;

/// Most pieces of operator state one snapshot may hold: 1024 (a source
/// writes one, its position).
pub const MAX_OPERATOR_STATES: u32 = 1024;

/// The longest zstd frame header (`ZSTD_FRAMEHEADERSIZE_MAX`): enough to
/// read a frame's declared content size before decompressing anything.
const FRAME_HEADER_MAX: usize = 18;

/// What a state file may hold, checked while it is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeBounds {
    /// Most bytes the payload may decompress to. Default
    /// [`DEFAULT_MAX_PAYLOAD_BYTES`]; more fails the decode.
    pub max_payload_bytes: u64,
    /// The key groups the file may hold. `None` (the default) only checks
    /// that groups ascend; restoring a checkpoint always sets it.
    pub key_groups: Option<KeyGroupBounds>,
}

impl Default for DecodeBounds {
    fn default() -> Self {
        DecodeBounds {
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            key_groups: None,
        }
    }
}

/// The key groups one subtask's state file may hold: those of its range,
/// each holding only keys that hash into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyGroupBounds {
    /// The subtask's range (from the checkpoint's parallelism and
    /// max_parallelism).
    pub range: KeyGroupRange,
    /// The checkpoint's max_parallelism: entry keys are hashed with it.
    pub max_parallelism: u32,
}

/// A decoded state file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedSnapshot {
    names: Vec<String>,
    payload: Vec<u8>,
    /// (group, start, end) of each block in `payload`, groups ascending.
    blocks: Vec<(u32, usize, usize)>,
    /// (name, start, end) of each piece of operator state in `payload`.
    operator: Vec<(String, usize, usize)>,
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
    /// A `u64` length, which must fit what is left.
    fn len64(&mut self) -> Result<usize, FormatError> {
        let n = self.u64()?;
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.buf.len() - self.pos)
            .ok_or_else(|| FormatError(format!("a length of {n} bytes at byte {} runs past the payload", self.pos)))
    }
    fn bytes(&mut self) -> Result<&'a [u8], FormatError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    /// A count of `n` items of at least `min` bytes each: it must fit what
    /// is left of the payload, so a forged count cannot reserve memory.
    fn count(&self, n: u32, min: usize, what: &str) -> Result<usize, FormatError> {
        let left = self.buf.len() - self.pos;
        let n = n as usize;
        if n.saturating_mul(min) > left {
            return Err(FormatError(format!("{n} {what} cannot fit in the {left} bytes left")));
        }
        Ok(n)
    }
}

/// An empty Vec with room for `n` items, or an error instead of an abort.
fn reserved<T>(n: usize, what: &str) -> Result<Vec<T>, FormatError> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| FormatError(format!("out of memory reserving {n} {what}")))?;
    Ok(v)
}

/// Why [`read_capped`] stopped.
#[derive(Debug)]
pub(crate) enum CappedReadError {
    /// More than the cap arrived.
    TooLarge,
    /// Growing the buffer to this many bytes failed.
    OutOfMemory(usize),
    /// Reading failed.
    Io(std::io::Error),
}

/// Read `r` to its end, failing as soon as more than `cap` bytes arrive.
/// The buffer starts at `hint` bytes (at most `cap`) and grows by doubling
/// with `try_reserve`, never past `cap`, so memory stays within the cap and
/// an allocation failure is an error rather than an abort.
pub(crate) fn read_capped(r: &mut impl Read, cap: u64, hint: u64) -> Result<Vec<u8>, CappedReadError> {
    let cap = usize::try_from(cap).unwrap_or(usize::MAX);
    let mut out = Vec::new();
    let first = usize::try_from(hint).unwrap_or(usize::MAX).min(cap);
    out.try_reserve_exact(first).map_err(|_| CappedReadError::OutOfMemory(first))?;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match r.read(&mut chunk) {
            Ok(0) => return Ok(out),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CappedReadError::Io(e)),
        };
        if n > cap - out.len() {
            return Err(CappedReadError::TooLarge);
        }
        if out.capacity() - out.len() < n {
            let grow = out.len().max(n).min(cap - out.len());
            out.try_reserve_exact(grow)
                .map_err(|_| CappedReadError::OutOfMemory(out.len().saturating_add(grow)))?;
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

/// Fill `buf` as far as `r` goes; the number of bytes read.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl DecodedSnapshot {
    /// Decode a state file held in memory, within the default bounds.
    pub fn decode(file: &[u8]) -> Result<Self, FormatError> {
        Self::read(file, &DecodeBounds::default())
    }

    /// Decode a state file read from `file`, never holding more than
    /// `bounds.max_payload_bytes` of payload: the payload is decompressed by
    /// zstd's streaming decoder into a buffer that stops growing at the cap.
    pub fn read(mut file: impl Read, bounds: &DecodeBounds) -> Result<Self, FormatError> {
        let io = |e: std::io::Error| FormatError(format!("reading: {e}"));
        let mut header = [0u8; 12];
        if read_up_to(&mut file, &mut header).map_err(io)? < header.len() || &header[..8] != MAGIC {
            return Err(FormatError("not a Sluice state file (bad magic)".into()));
        }
        let version = u32::from_le_bytes(header[8..12].try_into().unwrap_or_default());
        if version != VERSION {
            return Err(FormatError(format!("unsupported state file version {version}")));
        }
        let limit = bounds.max_payload_bytes;
        let too_large = || FormatError(format!("its payload decompresses to more than {limit} bytes, the limit"));
        // A frame that declares its size is refused before anything is
        // decompressed if it is too large, and otherwise gets its buffer in
        // one allocation; one that does not is stopped at the cap.
        let mut frame = [0u8; FRAME_HEADER_MAX];
        let n = read_up_to(&mut file, &mut frame).map_err(io)?;
        let declared = zstd::zstd_safe::get_frame_content_size(&frame[..n]).ok().flatten();
        if declared.is_some_and(|d| d > limit) {
            return Err(too_large());
        }
        let input = std::io::Cursor::new(&frame[..n]).chain(file);
        let mut decoder = zstd::stream::read::Decoder::new(input).map_err(|e| FormatError(format!("decompressing: {e}")))?;
        decoder
            .window_log_max(MAX_WINDOW_LOG)
            .map_err(|e| FormatError(format!("decompressing: {e}")))?;
        let payload = read_capped(&mut decoder, limit, declared.unwrap_or(0)).map_err(|e| match e {
            CappedReadError::TooLarge => too_large(),
            CappedReadError::OutOfMemory(n) => FormatError(format!("out of memory decompressing {n} bytes")),
            CappedReadError::Io(e) => FormatError(format!("decompressing: {e}")),
        })?;
        Self::parse(payload, bounds.key_groups)
    }

    /// Parse an uncompressed payload.
    pub fn from_payload(payload: Vec<u8>) -> Result<Self, FormatError> {
        Self::parse(payload, None)
    }

    fn parse(payload: Vec<u8>, key_groups: Option<KeyGroupBounds>) -> Result<Self, FormatError> {
        let mut r = Reader { buf: &payload, pos: 0 };
        let n = r.u32()?;
        if n > MAX_STATE_NAMES {
            return Err(FormatError(format!(
                "{n} state names, more than the {MAX_STATE_NAMES} a snapshot may hold"
            )));
        }
        let n = r.count(n, 4, "state names")?;
        let mut names = reserved(n, "state names")?;
        for _ in 0..n {
            let b = r.bytes()?;
            names.push(String::from_utf8(b.to_vec()).map_err(|_| FormatError("a state name is not UTF-8".into()))?);
        }
        let n = r.u32()?;
        let n = r.count(n, 12, "key groups")?;
        if let Some(kg) = key_groups
            && n > kg.range.len()
        {
            return Err(FormatError(format!(
                "{n} key groups, more than the {} of its subtask",
                kg.range.len()
            )));
        }
        let mut blocks: Vec<(u32, usize, usize)> = reserved(n, "key groups")?;
        for _ in 0..n {
            let g = r.u32()?;
            if let Some(&(last, ..)) = blocks.last()
                && g <= last
            {
                return Err(FormatError(format!(
                    "key group {g} after key group {last}: groups must ascend, each once"
                )));
            }
            if let Some(kg) = key_groups
                && !kg.range.contains(KeyGroup(g))
            {
                return Err(FormatError(format!(
                    "key group {g} is outside the key groups {}..={} of its subtask",
                    kg.range.start, kg.range.end
                )));
            }
            let len = r.len64()?;
            let start = r.pos;
            r.take(len)?;
            blocks.push((g, start, r.pos));
        }
        let n = r.u32()?;
        if n > MAX_OPERATOR_STATES {
            return Err(FormatError(format!(
                "{n} pieces of operator state, more than the {MAX_OPERATOR_STATES} a snapshot may hold"
            )));
        }
        let n = r.count(n, 12, "pieces of operator state")?;
        let mut operator = reserved(n, "pieces of operator state")?;
        for _ in 0..n {
            let name = String::from_utf8(r.bytes()?.to_vec()).map_err(|_| FormatError("an operator state name is not UTF-8".into()))?;
            let len = r.len64()?;
            let start = r.pos;
            r.take(len)?;
            operator.push((name, start, r.pos));
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
        // Validate every entry now, so restoring cannot fail half-way, and
        // check that each key belongs to the group it was filed under.
        for &(g, ..) in &me.blocks {
            for item in me.items(g) {
                let item = item?;
                let key = match &item {
                    Item::State { key, .. } => *key,
                    Item::Timer { timer, .. } => &timer.key[..],
                };
                if let Some(kg) = key_groups {
                    let actual = KeyGroup::of(key, kg.max_parallelism).0;
                    if actual != g {
                        return Err(FormatError(format!(
                            "key group {g} holds a key of key group {actual} (max_parallelism {})",
                            kg.max_parallelism
                        )));
                    }
                }
            }
        }
        Ok(me)
    }

    /// Key groups present, ascending.
    pub fn groups(&self) -> impl Iterator<Item = u32> + '_ {
        self.blocks.iter().map(|b| b.0)
    }

    /// The size of the decompressed payload (what the snapshot holds in
    /// memory).
    pub fn payload_bytes(&self) -> usize {
        self.payload.len()
    }

    /// A piece of operator state by name.
    pub fn operator_state(&self, name: &str) -> Option<&[u8]> {
        self.operator.iter().find(|(n, ..)| n == name).map(|&(_, s, e)| &self.payload[s..e])
    }

    /// The entries of key group `group`.
    pub fn items(&self, group: u32) -> impl Iterator<Item = Result<Item<'_>, FormatError>> + '_ {
        let block = self
            .blocks
            .binary_search_by_key(&group, |b| b.0)
            .map_or(&[][..], |i| &self.payload[self.blocks[i].1..self.blocks[i].2]);
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
    fn operator_state_appended_to_a_finished_payload_decodes() {
        let range = KeyGroupRange::for_subtask(16, 1, 0);
        let mut b = HeapKeyedState::new(range);
        let id = b.declare("label").unwrap();
        for i in 0..20u32 {
            let key = format!("v{i}");
            b.put(KeyGroup::of(key.as_bytes(), 16), key.as_bytes(), id, b"", &i.to_le_bytes())
                .unwrap();
        }
        let mut w = SnapshotWriter::new();
        w.keyed_state(&b);
        w.operator_state("first", vec![1]);
        let mut payload = w.finish();
        append_operator_state(&mut payload, "feedback", &[9, 9, 9]).unwrap();
        let d = DecodedSnapshot::decode(&encode_file(&payload)).unwrap();
        assert_eq!(d.operator_state("first"), Some(&[1u8][..]));
        assert_eq!(d.operator_state("feedback"), Some(&[9u8, 9, 9][..]));
        let mut b2 = HeapKeyedState::new(range);
        restore_keyed(&[std::sync::Arc::new(d)], range, &mut b2, None).unwrap();
        assert_eq!(b2.key_count(), 20);
        let mut cut = payload[..6].to_vec();
        assert!(append_operator_state(&mut cut, "x", &[]).is_err());
    }

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

    fn header() -> Vec<u8> {
        let mut f = MAGIC.to_vec();
        f.extend_from_slice(&VERSION.to_le_bytes());
        f
    }

    fn bounded(limit: u64) -> DecodeBounds {
        DecodeBounds {
            max_payload_bytes: limit,
            key_groups: None,
        }
    }

    /// A payload written by hand: state names, key group blocks, operator state.
    fn payload(names: &[&str], groups: &[(u32, Vec<u8>)], ops: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = (names.len() as u32).to_le_bytes().to_vec();
        for n in names {
            put_bytes(&mut out, n.as_bytes());
        }
        out.extend_from_slice(&(groups.len() as u32).to_le_bytes());
        for (g, block) in groups {
            out.extend_from_slice(&g.to_le_bytes());
            out.extend_from_slice(&(block.len() as u64).to_le_bytes());
            out.extend_from_slice(block);
        }
        out.extend_from_slice(&(ops.len() as u32).to_le_bytes());
        for (n, b) in ops {
            put_bytes(&mut out, n.as_bytes());
            out.extend_from_slice(&(b.len() as u64).to_le_bytes());
            out.extend_from_slice(b);
        }
        out
    }

    fn entry(key: &[u8]) -> Vec<u8> {
        let mut e = vec![TAG_STATE];
        e.extend_from_slice(&0u32.to_le_bytes());
        put_bytes(&mut e, key);
        put_bytes(&mut e, b"");
        put_bytes(&mut e, b"1");
        e
    }

    #[test]
    fn a_zstd_bomb_stops_at_the_payload_limit() {
        // A streamed frame does not declare its size: the decoder is cut off at the cap.
        let zeros = vec![0u8; 4 << 20];
        let mut bomb = header();
        bomb.extend_from_slice(&zstd::stream::encode_all(&zeros[..], 19).unwrap());
        assert!(bomb.len() < 4096, "{}", bomb.len());
        let err = DecodedSnapshot::read(&bomb[..], &bounded(1 << 20)).unwrap_err();
        assert!(err.0.contains("more than 1048576 bytes"), "{err}");
        // A frame declaring its size is refused before it is decompressed.
        let mut declared = header();
        declared.extend_from_slice(&zstd::bulk::compress(&zeros, 1).unwrap());
        assert_eq!(zstd::zstd_safe::get_frame_content_size(&declared[12..]).unwrap(), Some(4 << 20));
        let err = DecodedSnapshot::read(&declared[..], &bounded(1 << 20)).unwrap_err();
        assert!(err.0.contains("more than 1048576 bytes"), "{err}");
        // Within the limit the zeros decompress, and fail to parse instead.
        let err = DecodedSnapshot::read(&bomb[..], &bounded(8 << 20)).unwrap_err();
        assert!(err.0.contains("trailing bytes"), "{err}");
    }

    #[test]
    fn the_payload_limit_is_inclusive() {
        let p = payload(&["v"], &[], &[("position", &[1, 2, 3])]);
        let file = encode_file(&p);
        let len = p.len() as u64;
        let d = DecodedSnapshot::read(&file[..], &bounded(len)).unwrap();
        assert_eq!(d.payload_bytes(), p.len());
        assert_eq!(d.operator_state("position"), Some(&[1u8, 2, 3][..]));
        let err = DecodedSnapshot::read(&file[..], &bounded(len - 1)).unwrap_err();
        assert!(err.0.contains(&format!("more than {} bytes", len - 1)), "{err}");
    }

    #[test]
    fn read_capped_never_grows_past_its_cap() {
        let data = vec![7u8; 200_000];
        let v = read_capped(&mut &data[..], 200_000, 0).unwrap();
        assert_eq!(v.len(), 200_000);
        assert!(v.capacity() <= 200_000, "{}", v.capacity());
        assert!(matches!(read_capped(&mut &data[..], 199_999, 0), Err(CappedReadError::TooLarge)));
        // A hint larger than the cap reserves only the cap.
        let v = read_capped(&mut &data[..10], 100, u64::MAX).unwrap();
        assert_eq!((v.len(), v.capacity()), (10, 100));
    }

    #[test]
    fn forged_counts_and_lengths_are_refused_before_reserving() {
        let mut p = u32::MAX.to_le_bytes().to_vec();
        p.extend_from_slice(&[0; 8]);
        let err = DecodedSnapshot::from_payload(p).unwrap_err();
        assert!(err.0.contains("more than the 65536"), "{err}");
        let mut p = 60_000u32.to_le_bytes().to_vec();
        p.extend_from_slice(&[0; 8]);
        let err = DecodedSnapshot::from_payload(p).unwrap_err();
        assert!(err.0.contains("cannot fit"), "{err}");
        let mut p = payload(&[], &[], &[]);
        p.truncate(4);
        p.extend_from_slice(&1u32.to_le_bytes());
        p.extend_from_slice(&3u32.to_le_bytes());
        p.extend_from_slice(&u64::MAX.to_le_bytes());
        p.extend_from_slice(&[0; 8]);
        let err = DecodedSnapshot::from_payload(p).unwrap_err();
        assert!(err.0.contains("runs past the payload"), "{err}");
        let p = payload(&[], &[], &[("x", &[][..]); 1025]);
        let err = DecodedSnapshot::from_payload(p).unwrap_err();
        assert!(err.0.contains("more than the 1024"), "{err}");
    }

    #[test]
    fn key_groups_must_ascend_and_stay_in_the_subtasks_range() {
        let max = 16;
        let key = b"k42";
        let g = KeyGroup::of(key, max).0;
        let p = payload(&["v"], &[(g, entry(key)), (g, entry(key))], &[]);
        let err = DecodedSnapshot::from_payload(p).unwrap_err();
        assert!(err.0.contains("must ascend"), "{err}");

        let file = encode_file(&payload(&["v"], &[(g, entry(key))], &[]));
        let owner = KeyGroup(g).subtask(max, 2);
        let bounds = |subtask| DecodeBounds {
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            key_groups: Some(KeyGroupBounds {
                range: KeyGroupRange::for_subtask(max, 2, subtask),
                max_parallelism: max,
            }),
        };
        DecodedSnapshot::read(&file[..], &bounds(owner)).unwrap();
        let err = DecodedSnapshot::read(&file[..], &bounds(1 - owner)).unwrap_err();
        assert!(err.0.contains(&format!("key group {g} is outside")), "{err}");

        // A block relabelled to another group of the same subtask: its keys give it away.
        let range = KeyGroupRange::for_subtask(max, 2, owner);
        let other = range.iter().map(|k| k.0).find(|&k| k != g).unwrap();
        let file = encode_file(&payload(&["v"], &[(other, entry(key))], &[]));
        let err = DecodedSnapshot::read(&file[..], &bounds(owner)).unwrap_err();
        assert!(err.0.contains(&format!("key group {other} holds a key of key group {g}")), "{err}");
        // Without bounds (a file not tied to a subtask) only the order is checked.
        DecodedSnapshot::decode(&file).unwrap();
    }
}
