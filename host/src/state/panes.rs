//! A typed table of window accumulators: the `window-contents` state of a
//! window operator whose windows do not merge, kept apart from the generic
//! (key, state, user key) map.
//!
//! Each key is interned once into a slot, found through one hash of its
//! bytes (the xxh3 hash its key group comes from, so a record is hashed
//! once); a slot holds a short key and the key's first two open windows
//! inline, so reaching a key's accumulator touches no memory beyond its
//! slot. The window operator groups a batch by pane through the slots too
//! ([`PaneTable::last_pane`]): per record one probe of this table, and the
//! value read before a guest call is written back through the same slot,
//! without a second lookup. The table is charged to the operator's state
//! budget with the same per-key and per-entry overheads as
//! [`super::HeapKeyedState`], and snapshots write its entries exactly as
//! that backend writes `window-contents`, so checkpoints, savepoints and
//! rescaling do not see the difference.

use hashbrown::HashTable;
use sluice_guest::Window;
use smallvec::SmallVec;

use super::KeyGroup;
use super::heap::{ENTRY_OVERHEAD, KEY_OVERHEAD};
use crate::tenancy::{StateAccount, StateBudget, StateLimitExceeded};

/// An encoded window's size: the user key of its entry in a snapshot.
const WINDOW_BYTES: usize = 16;

/// A key's place in the table; valid until the key is swept out (see
/// [`PaneTable::sweep`]).
pub type Slot = u32;

/// Bytes kept inline when short (keys such as words or ids, counts, sums,
/// small structs), so most keys and windows cost no allocation of their
/// own and reading them touches no memory beyond their slot.
#[derive(Debug)]
enum Inline {
    Short(u8, [u8; Inline::INLINE]),
    Heap(Box<[u8]>),
}

impl Inline {
    const INLINE: usize = 22;

    fn new(value: &[u8]) -> Inline {
        if value.len() <= Self::INLINE {
            let mut b = [0; Self::INLINE];
            b[..value.len()].copy_from_slice(value);
            Inline::Short(value.len() as u8, b)
        } else {
            Inline::Heap(value.into())
        }
    }

    #[inline]
    fn bytes(&self) -> &[u8] {
        match self {
            Inline::Short(n, b) => &b[..*n as usize],
            Inline::Heap(b) => b,
        }
    }

    #[inline]
    fn set(&mut self, value: &[u8]) {
        match self {
            Inline::Short(n, b) if value.len() <= Self::INLINE => {
                b[..value.len()].copy_from_slice(value);
                *n = value.len() as u8;
            }
            Inline::Heap(b) if b.len() == value.len() => b.copy_from_slice(value),
            _ => *self = Inline::new(value),
        }
    }
}

#[derive(Debug)]
struct KeyWindows {
    hash: u64,
    key: Inline,
    /// Open windows in insertion order (a key has few: those the watermark
    /// has not passed yet), the first two inside the slot.
    windows: SmallVec<[(Window, Inline); 2]>,
    group: KeyGroup,
    /// The sweep epoch of the last write.
    used: u32,
    /// The batch of [`PaneTable::begin_batch`] that `pane` belongs to.
    mark: u32,
    /// The last pane of this key in batch `mark`, for the caller grouping
    /// a batch's records by pane.
    pane: u32,
    /// On the idle list.
    queued: bool,
}

/// The accumulators of one window operator subtask, by key and window.
#[derive(Debug)]
pub struct PaneTable {
    /// Mixed into every key's xxh3 hash, so the table's layout cannot be
    /// predicted from the keys.
    seed: u64,
    index: HashTable<Slot>,
    slots: Vec<Option<KeyWindows>>,
    free: Vec<Slot>,
    /// Slots whose last window was removed: kept (a key usually comes back
    /// in the next window), freed by [`Self::sweep`] once idle for a while.
    idle: Vec<Slot>,
    epoch: u32,
    batch: u32,
    bytes: usize,
    account: StateAccount,
}

impl Default for PaneTable {
    fn default() -> Self {
        use std::hash::BuildHasher;
        PaneTable {
            seed: std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64) | 1,
            index: HashTable::new(),
            slots: Vec::new(),
            free: Vec::new(),
            idle: Vec::new(),
            epoch: 0,
            batch: 0,
            bytes: 0,
            account: StateAccount::default(),
        }
    }
}

impl PaneTable {
    /// An empty table charged to `budget`.
    pub fn with_budget(budget: Option<StateBudget>) -> Self {
        PaneTable {
            account: budget.map(StateAccount::new).unwrap_or_default(),
            ..Default::default()
        }
    }

    /// Drop every key and accumulator (batch mode, once the keys in hand
    /// are done).
    pub fn clear(&mut self) {
        self.index.clear();
        self.slots.clear();
        self.free.clear();
        self.idle.clear();
        self.bytes = 0;
        self.account.shrink_to(0);
    }

    /// The hash the table files `key` under.
    #[inline]
    pub fn hash(&self, key: &[u8]) -> u64 {
        self.hash_xxh3(xxhash_rust::xxh3::xxh3_64(key))
    }

    /// The hash the table files a key under, from the key's xxh3 hash (the
    /// one its key group is computed from, so one hash serves both).
    #[inline]
    pub fn hash_xxh3(&self, xxh3: u64) -> u64 {
        // A folded multiply: every bit of the product reaches the low bits
        // the table indexes by.
        let m = u128::from(xxh3 ^ self.seed) * 0x9E37_79B9_7F4A_7C15_u128;
        (m as u64) ^ ((m >> 64) as u64)
    }

    fn live(&self, slot: Slot) -> Option<&KeyWindows> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    /// The slot of `key` (hashed by [`Self::hash`]), if it has any window.
    #[inline]
    pub fn find(&self, hash: u64, key: &[u8]) -> Option<Slot> {
        let slots = &self.slots;
        self.index
            .find(hash, |&s| {
                slots[s as usize].as_ref().is_some_and(|k| k.hash == hash && k.key.bytes() == key)
            })
            .copied()
    }

    /// The slot of `key`, interning it when new (charged to the budget).
    pub fn slot(&mut self, hash: u64, key: &[u8], group: KeyGroup) -> Result<Slot, StateLimitExceeded> {
        if let Some(s) = self.find(hash, key) {
            return Ok(s);
        }
        let cost = key.len() + KEY_OVERHEAD;
        self.account.cover(self.bytes.saturating_add(cost) as u64)?;
        self.bytes += cost;
        let entry = KeyWindows {
            hash,
            key: Inline::new(key),
            windows: SmallVec::new(),
            group,
            used: self.epoch,
            mark: self.batch.wrapping_sub(1),
            pane: 0,
            queued: false,
        };
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(entry);
                s
            }
            None => {
                self.slots.push(Some(entry));
                (self.slots.len() - 1) as Slot
            }
        };
        let slots = &self.slots;
        self.index
            .insert_unique(hash, slot, |&s| slots[s as usize].as_ref().map_or(0, |k| k.hash));
        Ok(slot)
    }

    /// Start grouping a new batch: the panes noted with
    /// [`Self::set_last_pane`] for earlier batches lapse.
    pub fn begin_batch(&mut self) {
        self.batch = self.batch.wrapping_add(1);
    }

    /// The pane noted for `slot` in the current batch. (After 2^32 batches
    /// an old note may come back: the caller checks the pane is its key's.)
    #[inline]
    pub fn last_pane(&self, slot: Slot) -> Option<u32> {
        self.live(slot).filter(|k| k.mark == self.batch).map(|k| k.pane)
    }

    /// Note `pane` as `slot`'s latest pane in the current batch.
    #[inline]
    pub fn set_last_pane(&mut self, slot: Slot, pane: u32) {
        let batch = self.batch;
        if let Some(Some(k)) = self.slots.get_mut(slot as usize) {
            k.mark = batch;
            k.pane = pane;
        }
    }

    /// The accumulator of `w` under `slot`.
    #[inline]
    pub fn get(&self, slot: Slot, w: &Window) -> Option<&[u8]> {
        let k = self.live(slot)?;
        k.windows
            .iter()
            .find(|(x, _)| x.start == w.start && x.end == w.end)
            .map(|(_, a)| a.bytes())
    }

    /// The accumulator of `w` of `key`.
    pub fn get_by_key(&self, key: &[u8], w: &Window) -> Option<&[u8]> {
        self.get(self.find(self.hash(key), key)?, w)
    }

    /// Store the accumulator of `w` under `slot`.
    pub fn put(&mut self, slot: Slot, w: &Window, value: &[u8]) -> Result<(), StateLimitExceeded> {
        let Some(Some(k)) = self.slots.get_mut(slot as usize) else {
            return Ok(());
        };
        k.used = self.epoch;
        match k.windows.iter_mut().find(|(x, _)| x == w) {
            Some((_, acc)) if acc.bytes().len() == value.len() => acc.set(value),
            Some((_, acc)) => {
                let old = acc.bytes().len();
                let grow = value.len().saturating_sub(old);
                self.account.cover(self.bytes.saturating_add(grow) as u64)?;
                self.bytes = self.bytes + value.len() - old;
                acc.set(value);
                self.account.shrink_to(self.bytes as u64);
            }
            None => {
                let cost = WINDOW_BYTES + value.len() + ENTRY_OVERHEAD;
                self.account.cover(self.bytes.saturating_add(cost) as u64)?;
                self.bytes += cost;
                k.windows.push((*w, Inline::new(value)));
            }
        }
        Ok(())
    }

    /// Remove the accumulator of `w` of `key`; a key left without windows
    /// gives its slot up.
    pub fn remove(&mut self, key: &[u8], w: &Window) {
        let hash = self.hash(key);
        let Some(slot) = self.find(hash, key) else { return };
        let Some(Some(k)) = self.slots.get_mut(slot as usize) else { return };
        let Some(i) = k.windows.iter().position(|(x, _)| x == w) else {
            return;
        };
        let (_, acc) = k.windows.swap_remove(i);
        self.bytes = self.bytes.saturating_sub(WINDOW_BYTES + acc.bytes().len() + ENTRY_OVERHEAD);
        if k.windows.is_empty() && !k.queued {
            k.queued = true;
            self.idle.push(slot);
        }
        self.account.shrink_to(self.bytes as u64);
    }

    /// Free the keys that have held no window since before the previous
    /// sweep; called as event time advances (each watermark), so a key
    /// seen in every window keeps its slot and its window vector.
    pub fn sweep(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
        for slot in std::mem::take(&mut self.idle) {
            let Some(Some(k)) = self.slots.get_mut(slot as usize) else {
                continue;
            };
            if !k.windows.is_empty() {
                k.queued = false;
            } else if self.epoch.wrapping_sub(k.used) >= 2 {
                self.release_if_empty(slot);
            } else {
                self.idle.push(slot);
            }
        }
    }

    /// Give up `slot` if its key holds no window (interned for a write
    /// that did not happen).
    pub fn release_if_empty(&mut self, slot: Slot) {
        let Some(Some(k)) = self.slots.get(slot as usize) else { return };
        if !k.windows.is_empty() {
            return;
        }
        let (hash, len) = (k.hash, k.key.bytes().len());
        self.bytes = self.bytes.saturating_sub(len + KEY_OVERHEAD);
        self.slots[slot as usize] = None;
        if let Ok(e) = self.index.find_entry(hash, |&s| s == slot) {
            e.remove();
        }
        self.free.push(slot);
        self.account.shrink_to(self.bytes as u64);
    }

    /// Every (group, key, window, accumulator), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (KeyGroup, &[u8], &Window, &[u8])> {
        self.slots
            .iter()
            .flatten()
            .flat_map(|k| k.windows.iter().map(move |(w, a)| (k.group, k.key.bytes(), w, a.bytes())))
    }

    /// Bytes charged: keys, windows and accumulators with their overheads.
    pub fn size_bytes(&self) -> usize {
        self.bytes
    }

    /// Keys interned: those with a window, and idle ones not swept yet.
    pub fn key_count(&self) -> usize {
        self.index.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_kept_per_key_and_slots_are_reused() {
        let mut t = PaneTable::default();
        let (w1, w2) = (Window { start: 0, end: 10 }, Window { start: 10, end: 20 });
        let g = KeyGroup(3);
        let ha = t.hash(b"a");
        let a = t.slot(ha, b"a", g).unwrap();
        assert_eq!(t.slot(ha, b"a", g).unwrap(), a);
        t.put(a, &w1, b"1").unwrap();
        t.put(a, &w2, b"22").unwrap();
        let b = t.slot(t.hash(b"b"), b"b", g).unwrap();
        assert_ne!(a, b);
        t.put(b, &w1, b"3").unwrap();
        assert_eq!(t.get(a, &w1), Some(&b"1"[..]));
        assert_eq!(t.get_by_key(b"a", &w2), Some(&b"22"[..]));
        assert_eq!(t.get_by_key(b"b", &w2), None);
        t.put(a, &w1, b"111").unwrap();
        assert_eq!(t.get(a, &w1), Some(&b"111"[..]));
        // Long accumulators live on the heap, short ones inline, either way round.
        let long = [7u8; 40];
        t.put(a, &w1, &long).unwrap();
        assert_eq!(t.get(a, &w1), Some(&long[..]));
        t.put(a, &w1, &[9u8; 40]).unwrap();
        assert_eq!(t.get(a, &w1), Some(&[9u8; 40][..]));
        t.put(a, &w1, b"111").unwrap();
        assert_eq!(t.get(a, &w1), Some(&b"111"[..]));
        assert_eq!(t.iter().count(), 3);
        let full = t.size_bytes();
        t.remove(b"a", &w1);
        t.remove(b"a", &w2);
        // An idle key keeps its slot until two sweeps have passed it by.
        assert_eq!(t.find(ha, b"a"), Some(a));
        t.sweep();
        assert_eq!(t.find(ha, b"a"), Some(a));
        t.sweep();
        assert_eq!(t.find(ha, b"a"), None);
        assert_eq!(t.key_count(), 1);
        assert!(t.size_bytes() < full);
        // The freed slot goes to the next new key.
        let c = t.slot(t.hash(b"c"), b"c", g).unwrap();
        assert_eq!(c, a);
        t.remove(b"b", &w1);
        // A key interned without a window is given up when asked.
        t.release_if_empty(c);
        assert_eq!(t.key_count(), 1);
        // A key written again between sweeps stays.
        let b2 = t.slot(t.hash(b"b"), b"b", g).unwrap();
        t.put(b2, &w2, b"4").unwrap();
        t.sweep();
        t.sweep();
        assert_eq!(t.get_by_key(b"b", &w2), Some(&b"4"[..]));
        t.remove(b"b", &w2);
        t.sweep();
        t.sweep();
        assert_eq!((t.size_bytes(), t.key_count()), (0, 0));
    }

    #[test]
    fn growth_past_the_budget_is_refused() {
        let budget = StateBudget::new(Some(300), None);
        let mut t = PaneTable::with_budget(Some(budget));
        let s = t.slot(t.hash(b"k"), b"k", KeyGroup(0)).unwrap();
        let mut refused = false;
        for i in 0..10 {
            if t.put(s, &Window { start: i, end: i + 1 }, &[0; 9]).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused);
        assert!(t.size_bytes() <= 300);
    }
}
