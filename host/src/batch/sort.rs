//! An external sort of a keyed task's input that groups it by key: by the
//! key's 64-bit hash, then the key's bytes (so keys are grouped in an order
//! that compares integers, not bytes, almost always), then timestamp, then
//! input, then arrival. Records are gathered in memory up to a budget, each
//! key interned once per run (equal keys then compare by a number); past
//! the budget, the gathered records are sorted and written to a run file;
//! at the end the runs are merged (at most [`FAN_IN`] at a time).
//!
//! ```text
//! run file  records, each: flags u8 (bit 0 key, bit 1 timestamp) · input u8
//!           · key hash u64 LE · key length u32 LE · key · timestamp i64 LE
//!           · value length u32 LE · value
//! ```
//!
//! Memory is the budget (the arena of keys and values and the index of
//! entries are allocated at their share of it once and never grow, except
//! for a single record larger than the whole budget; the key table is
//! counted in the index's share) plus a read buffer per run while merging.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fs::File;
use std::hash::BuildHasher;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use hashbrown::HashTable;
use sluice_guest::batch::RecordRef;

use super::spill::{MAX_FRAME, read_full};

/// Most runs merged at once; more are first merged into longer runs.
pub const FAN_IN: usize = 64;

/// Bytes of the key table per key held: the (hash, number, offset, length)
/// slot, its control byte, and the table's slack below full.
const KEY_SLOT_BYTES: usize = 32;

const HAS_KEY: u8 = 1;
const HAS_TIMESTAMP: u8 = 2;

fn flags(key: bool, timestamp: bool) -> u8 {
    (if key { HAS_KEY } else { 0 }) | (if timestamp { HAS_TIMESTAMP } else { 0 })
}

/// What a sort did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SortStats {
    /// Records sorted.
    pub records: u64,
    /// Sorted runs written to disk (0: sorted in memory).
    pub runs: u32,
    /// Bytes written to run files, merge passes included.
    pub spilled_bytes: u64,
}

/// One record as the sort hands it out (its buffers are reused).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SortedRecord {
    /// The hash of its key (the first thing records are ordered by).
    pub hash: u64,
    /// Its key, if it has one (empty otherwise).
    pub key: Vec<u8>,
    /// Whether it has a key.
    pub has_key: bool,
    /// Its timestamp.
    pub timestamp: Option<i64>,
    /// The input (0 or 1) it came from.
    pub input: u8,
    /// Its value.
    pub value: Vec<u8>,
}

impl SortedRecord {
    /// The record as a batch would hold it.
    pub fn as_ref(&self) -> RecordRef<'_> {
        RecordRef {
            key: self.has_key.then_some(&self.key[..]),
            value: &self.value,
            timestamp: self.timestamp,
        }
    }

    fn order(&self, other: &SortedRecord) -> Ordering {
        self.hash
            .cmp(&other.hash)
            .then_with(|| self.key.cmp(&other.key))
            .then(self.timestamp.unwrap_or(i64::MIN).cmp(&other.timestamp.unwrap_or(i64::MIN)))
            .then(self.input.cmp(&other.input))
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    hash: u64,
    /// The key's number in this run: equal numbers, equal keys.
    group: u32,
    offset: usize,
    key_len: u32,
    value_len: u32,
    timestamp: i64,
    flags: u8,
    input: u8,
}

impl Entry {
    fn key<'a>(&self, arena: &'a [u8]) -> &'a [u8] {
        &arena[self.offset..self.offset + self.key_len as usize]
    }

    fn value<'a>(&self, arena: &'a [u8]) -> &'a [u8] {
        let start = self.offset + self.key_len as usize;
        &arena[start..start + self.value_len as usize]
    }

    fn ts(&self) -> i64 {
        if self.flags & HAS_TIMESTAMP != 0 {
            self.timestamp
        } else {
            i64::MIN
        }
    }
}

/// Sorts records within a memory budget, spilling sorted runs to `dir`.
pub struct ExternalSorter {
    hasher: foldhash::fast::FixedState,
    /// The keys of the run in memory: (hash, group, offset, length).
    groups: HashTable<(u64, u32, usize, u32)>,
    dir: PathBuf,
    arena: Vec<u8>,
    entries: Vec<Entry>,
    arena_bytes: usize,
    max_entries: usize,
    runs: Vec<PathBuf>,
    next_run: u32,
    stats: SortStats,
}

impl ExternalSorter {
    /// A sorter holding at most about `budget` bytes (at least 64 KiB) in
    /// memory, writing runs into `dir` (created when the first run is).
    pub fn new(budget: usize, dir: &Path) -> Self {
        let budget = budget.max(64 << 10);
        // A quarter for the index: an entry, and (all keys distinct) a slot
        // of the key table, about 32 bytes with its control byte and slack.
        let index = budget / 4;
        ExternalSorter {
            hasher: foldhash::fast::FixedState::with_seed(0x5107_ce5e),
            groups: HashTable::new(),
            dir: dir.to_owned(),
            arena: Vec::new(),
            entries: Vec::new(),
            arena_bytes: budget - index,
            max_entries: (index / (std::mem::size_of::<Entry>() + KEY_SLOT_BYTES)).max(1),
            runs: Vec::new(),
            next_run: 0,
            stats: SortStats::default(),
        }
    }

    /// Add a record from input `input`.
    pub fn push(&mut self, input: u8, r: &RecordRef<'_>) -> Result<(), String> {
        let key = r.key.unwrap_or_default();
        let need = key.len() + r.value.len();
        if key.len() > MAX_FRAME || r.value.len() > MAX_FRAME {
            return Err(format!("a record of {need} bytes is too large to sort"));
        }
        if !self.entries.is_empty() && (self.arena.len() + need > self.arena_bytes || self.entries.len() >= self.max_entries) {
            self.spill()?;
        }
        if self.entries.capacity() == 0 {
            self.entries.reserve_exact(self.max_entries);
            self.arena.reserve_exact(self.arena_bytes);
        }
        let offset = self.arena.len();
        let hash = self.hasher.hash_one(key);
        let arena = &self.arena;
        let next = self.groups.len() as u32;
        let group = match self
            .groups
            .find(hash, |&(h, _, o, l)| h == hash && &arena[o..o + l as usize] == key)
        {
            Some(&(_, g, _, _)) => g,
            None => {
                self.groups.insert_unique(hash, (hash, next, offset, key.len() as u32), |g| g.0);
                next
            }
        };
        self.arena.extend_from_slice(key);
        self.arena.extend_from_slice(r.value);
        self.entries.push(Entry {
            hash,
            group,
            offset,
            key_len: key.len() as u32,
            value_len: r.value.len() as u32,
            timestamp: r.timestamp.unwrap_or(0),
            flags: flags(r.key.is_some(), r.timestamp.is_some()),
            input,
        });
        self.stats.records += 1;
        Ok(())
    }

    fn sort_entries(&mut self) {
        let arena = &self.arena;
        // Stable: records equal in key, time and input keep their arrival
        // order. Keys compare by hash, then (only two keys of one hash) by
        // their bytes.
        self.entries.sort_by(|a, b| {
            a.hash
                .cmp(&b.hash)
                .then_with(|| {
                    if a.group == b.group {
                        Ordering::Equal
                    } else {
                        a.key(arena).cmp(b.key(arena))
                    }
                })
                .then(a.ts().cmp(&b.ts()))
                .then(a.input.cmp(&b.input))
        });
    }

    fn run_path(&mut self) -> Result<PathBuf, String> {
        if self.next_run == 0 {
            std::fs::create_dir_all(&self.dir).map_err(|e| format!("creating {}: {e}", self.dir.display()))?;
        }
        let path = self.dir.join(format!("run-{}.sort", self.next_run));
        self.next_run += 1;
        Ok(path)
    }

    /// Sort what is in memory and write it as a run.
    fn spill(&mut self) -> Result<(), String> {
        self.sort_entries();
        let path = self.run_path()?;
        let mut w = RunWriter::create(&path)?;
        for e in &self.entries {
            let rec = (e.flags, e.input, e.hash, e.key(&self.arena), e.timestamp, e.value(&self.arena));
            w.write(rec)?;
        }
        self.stats.spilled_bytes += w.finish()?;
        self.stats.runs += 1;
        self.runs.push(path);
        self.entries.clear();
        self.arena.clear();
        self.groups.clear();
        Ok(())
    }

    /// Done adding: the records in order.
    pub fn finish(mut self) -> Result<(SortedStream, SortStats), String> {
        if self.runs.is_empty() {
            self.sort_entries();
            let stats = self.stats;
            return Ok((
                SortedStream(Source::Memory {
                    arena: self.arena,
                    entries: self.entries.into_iter(),
                }),
                stats,
            ));
        }
        if !self.entries.is_empty() {
            self.spill()?;
        }
        // Give the memory back before merging.
        self.arena = Vec::new();
        self.entries = Vec::new();
        self.groups = HashTable::new();
        // Merge passes keep the runs in arrival order, so the merge can
        // break ties by run.
        while self.runs.len() > FAN_IN {
            let runs = std::mem::take(&mut self.runs);
            for group in runs.chunks(FAN_IN) {
                if group.len() == 1 {
                    self.runs.push(group[0].clone());
                    continue;
                }
                let path = self.run_path()?;
                let mut merge = Merge::open(group)?;
                let mut w = RunWriter::create(&path)?;
                let mut r = SortedRecord::default();
                while merge.next_into(&mut r)? {
                    let flags = flags(r.has_key, r.timestamp.is_some());
                    w.write((flags, r.input, r.hash, &r.key, r.timestamp.unwrap_or(0), &r.value))?;
                }
                self.stats.spilled_bytes += w.finish()?;
                for p in group {
                    let _ = std::fs::remove_file(p);
                }
                self.runs.push(path);
            }
        }
        let stats = self.stats;
        Ok((SortedStream(Source::Merge(Merge::open(&self.runs)?)), stats))
    }
}

struct RunWriter {
    path: PathBuf,
    out: BufWriter<File>,
    bytes: u64,
}

impl RunWriter {
    fn create(path: &Path) -> Result<Self, String> {
        let file = File::create(path).map_err(|e| format!("creating sort run {}: {e}", path.display()))?;
        Ok(RunWriter {
            path: path.to_owned(),
            out: BufWriter::with_capacity(256 << 10, file),
            bytes: 0,
        })
    }

    fn write(&mut self, (flags, input, hash, key, timestamp, value): (u8, u8, u64, &[u8], i64, &[u8])) -> Result<(), String> {
        let w = &mut self.out;
        w.write_all(&[flags, input])
            .and_then(|()| w.write_all(&hash.to_le_bytes()))
            .and_then(|()| w.write_all(&(key.len() as u32).to_le_bytes()))
            .and_then(|()| w.write_all(key))
            .and_then(|()| w.write_all(&timestamp.to_le_bytes()))
            .and_then(|()| w.write_all(&(value.len() as u32).to_le_bytes()))
            .and_then(|()| w.write_all(value))
            .map_err(|e| format!("writing sort run {}: {e}", self.path.display()))?;
        self.bytes += 26 + key.len() as u64 + value.len() as u64;
        Ok(())
    }

    fn finish(mut self) -> Result<u64, String> {
        self.out
            .flush()
            .map_err(|e| format!("writing sort run {}: {e}", self.path.display()))?;
        Ok(self.bytes)
    }
}

struct RunReader {
    path: PathBuf,
    input: BufReader<File>,
}

impl RunReader {
    fn open(path: &Path) -> Result<Self, String> {
        let file = File::open(path).map_err(|e| format!("opening sort run {}: {e}", path.display()))?;
        Ok(RunReader {
            path: path.to_owned(),
            input: BufReader::with_capacity(64 << 10, file),
        })
    }

    fn bad(&self, what: impl std::fmt::Display) -> String {
        format!("sort run {}: {what}", self.path.display())
    }

    fn len(&mut self) -> Result<usize, String> {
        let mut b = [0u8; 4];
        self.input.read_exact(&mut b).map_err(|e| self.bad(format!("cut off: {e}")))?;
        let n = u32::from_le_bytes(b) as usize;
        if n > MAX_FRAME {
            return Err(self.bad(format!("a field of {n} bytes is over the {MAX_FRAME} allowed")));
        }
        Ok(n)
    }

    /// Read the next record into `r`; false at the end of the run.
    fn next_into(&mut self, r: &mut SortedRecord) -> Result<bool, String> {
        let mut head = [0u8; 2];
        match read_full(&mut self.input, &mut head) {
            Ok(0) => return Ok(false),
            Ok(2) => {}
            Ok(_) => return Err(self.bad("a record cut off")),
            Err(e) => return Err(self.bad(e)),
        }
        let [flags, input] = head;
        if flags & !(HAS_KEY | HAS_TIMESTAMP) != 0 || input > 1 {
            return Err(self.bad(format!("a record with flags {flags} and input {input}")));
        }
        let mut hash = [0u8; 8];
        self.input.read_exact(&mut hash).map_err(|e| self.bad(format!("cut off: {e}")))?;
        r.hash = u64::from_le_bytes(hash);
        let n = self.len()?;
        r.key.resize(n, 0);
        self.input.read_exact(&mut r.key).map_err(|e| self.bad(format!("cut off: {e}")))?;
        let mut ts = [0u8; 8];
        self.input.read_exact(&mut ts).map_err(|e| self.bad(format!("cut off: {e}")))?;
        let n = self.len()?;
        r.value.resize(n, 0);
        self.input.read_exact(&mut r.value).map_err(|e| self.bad(format!("cut off: {e}")))?;
        r.has_key = flags & HAS_KEY != 0;
        r.timestamp = (flags & HAS_TIMESTAMP != 0).then(|| i64::from_le_bytes(ts));
        r.input = input;
        Ok(true)
    }
}

/// The head record of one run in the merge.
struct Head {
    record: SortedRecord,
    run: usize,
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Head {
    /// Reversed (the heap pops the greatest): the smallest record first,
    /// the earlier run first among equals (runs are in arrival order).
    fn cmp(&self, other: &Self) -> Ordering {
        other.record.order(&self.record).then(other.run.cmp(&self.run))
    }
}

/// A k-way merge of sorted runs.
struct Merge {
    readers: Vec<RunReader>,
    heap: BinaryHeap<Head>,
    spare: SortedRecord,
}

impl Merge {
    fn open(runs: &[PathBuf]) -> Result<Self, String> {
        let mut readers = runs.iter().map(|p| RunReader::open(p)).collect::<Result<Vec<_>, _>>()?;
        let mut heap = BinaryHeap::with_capacity(readers.len());
        for (run, reader) in readers.iter_mut().enumerate() {
            let mut record = SortedRecord::default();
            if reader.next_into(&mut record)? {
                heap.push(Head { record, run });
            }
        }
        Ok(Merge {
            readers,
            heap,
            spare: SortedRecord::default(),
        })
    }

    fn next_into(&mut self, out: &mut SortedRecord) -> Result<bool, String> {
        let Some(mut head) = self.heap.pop() else { return Ok(false) };
        std::mem::swap(out, &mut head.record);
        // Refill the popped run, reusing the buffers given back in `out`.
        std::mem::swap(&mut head.record, &mut self.spare);
        if self.readers[head.run].next_into(&mut head.record)? {
            self.heap.push(head);
        } else {
            self.spare = head.record;
        }
        Ok(true)
    }
}

/// Sorted records, from memory or merged from runs.
pub struct SortedStream(Source);

enum Source {
    /// Everything fit in the budget: keys and values, and the sorted index
    /// into them.
    Memory {
        arena: Vec<u8>,
        entries: std::vec::IntoIter<Entry>,
    },
    /// Merged from runs on disk.
    Merge(Merge),
}

impl SortedStream {
    /// The next record, into `out` (its buffers are reused); false at the end.
    pub fn next_into(&mut self, out: &mut SortedRecord) -> Result<bool, String> {
        match &mut self.0 {
            Source::Memory { arena, entries } => {
                let Some(e) = entries.next() else { return Ok(false) };
                out.hash = e.hash;
                out.key.clear();
                out.key.extend_from_slice(e.key(arena));
                out.value.clear();
                out.value.extend_from_slice(e.value(arena));
                out.has_key = e.flags & HAS_KEY != 0;
                out.timestamp = (e.flags & HAS_TIMESTAMP != 0).then_some(e.timestamp);
                out.input = e.input;
                Ok(true)
            }
            Source::Merge(m) => m.next_into(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn sort_all(records: &[(Option<&str>, Option<i64>, u8, String)], budget: usize, name: &str) -> (Vec<SortedRecord>, SortStats) {
        let dir = std::env::temp_dir().join(format!("sluice-sort-test-{name}-{}", std::process::id()));
        let mut s = ExternalSorter::new(budget, &dir);
        for (k, ts, input, v) in records {
            let r = RecordRef {
                key: k.map(str::as_bytes),
                value: v.as_bytes(),
                timestamp: *ts,
            };
            s.push(*input, &r).unwrap();
        }
        let (mut stream, stats) = s.finish().unwrap();
        let mut out = Vec::new();
        let mut r = SortedRecord::default();
        while stream.next_into(&mut r).unwrap() {
            out.push(r.clone());
        }
        let _ = std::fs::remove_dir_all(&dir);
        (out, stats)
    }

    #[test]
    fn spilled_and_in_memory_sorts_agree_with_a_stable_sort() {
        // Keys with a skew, timestamps out of order, both inputs, and
        // records equal in key, time and input (their order must be kept).
        let mut rng = 7u64;
        let mut records = Vec::new();
        for i in 0..40_000u64 {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let key = format!("k{}", (rng >> 33) % 300 % ((rng >> 20) % 300 + 1));
            let ts = ((rng >> 40) % 50) as i64;
            let input = ((rng >> 13) & 1) as u8;
            let key = if i % 97 == 0 { None } else { Some(key) };
            records.push((key, (i % 11 != 0).then_some(ts), input, format!("v{i}")));
        }
        let refs: Vec<(Option<&str>, Option<i64>, u8, String)> =
            records.iter().map(|(k, t, i, v)| (k.as_deref(), *t, *i, v.clone())).collect();
        // Per key, its records' values in (timestamp, input, arrival) order.
        let mut expected: BTreeMap<&str, Vec<(i64, u8, usize, &str)>> = BTreeMap::new();
        for (i, r) in refs.iter().enumerate() {
            expected
                .entry(r.0.unwrap_or(""))
                .or_default()
                .push((r.1.unwrap_or(i64::MIN), r.2, i, &r.3));
        }
        for v in expected.values_mut() {
            v.sort();
        }
        let (memory, stats) = sort_all(&refs, 64 << 20, "memory");
        assert_eq!(stats.runs, 0);
        let (spilled, stats) = sort_all(&refs, 64 << 10, "spilled");
        assert!(stats.runs > FAN_IN as u32, "{stats:?}: enough runs for a merge pass");
        assert!(stats.spilled_bytes > 0);
        assert_eq!(memory, spilled);
        // Every key's records come together (one group per key), in order.
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut last: Option<&[u8]> = None;
        for r in &memory {
            let key = String::from_utf8(r.key.clone()).unwrap();
            if last != Some(&r.key[..]) {
                assert!(!groups.contains_key(&key), "key {key} in two groups");
            }
            groups.entry(key).or_default().push(String::from_utf8(r.value.clone()).unwrap());
            last = Some(&r.key);
        }
        assert_eq!(groups.len(), expected.len());
        for (k, values) in &groups {
            let want: Vec<&str> = expected[k.as_str()].iter().map(|e| e.3).collect();
            assert_eq!(values, &want, "records of {k}");
        }
        let none = memory.iter().filter(|r| !r.has_key).count();
        assert_eq!(none, records.iter().filter(|r| r.0.is_none()).count());
    }
}
