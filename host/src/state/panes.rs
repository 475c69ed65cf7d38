//! A typed table of window accumulators: the `window-contents` state of a
//! window operator whose windows do not merge, kept apart from the generic
//! (key, state, user key) map.
//!
//! Each key is interned once into a slot (found through one hash of its
//! bytes); a slot holds the key's open windows as a short vector of
//! (window, accumulator), searched by comparing window starts. So adding a
//! batch costs one hash-table probe per distinct key of the batch, and the
//! value read before a guest call is written back through the same slot,
//! without a second lookup. The table is charged to the operator's state
//! budget with the same per-key and per-entry overheads as
//! [`super::HeapKeyedState`], and snapshots write its entries exactly as
//! that backend writes `window-contents`, so checkpoints, savepoints and
//! rescaling do not see the difference.

use std::hash::BuildHasher;

use hashbrown::HashTable;
use sluice_guest::Window;

use super::heap::{ENTRY_OVERHEAD, KEY_OVERHEAD};
use super::{KeyGroup, KeyHasher};
use crate::tenancy::{StateAccount, StateBudget, StateLimitExceeded};

/// An encoded window's size: the user key of its entry in a snapshot.
const WINDOW_BYTES: usize = 16;

/// A key's place in the table; valid until the key is swept out (see
/// [`PaneTable::sweep`]).
pub type Slot = u32;

/// An accumulator's bytes: inline when short (counts, sums, small
/// structs), so most windows cost no allocation of their own.
#[derive(Debug)]
enum Acc {
    Inline(u8, [u8; Acc::INLINE]),
    Heap(Box<[u8]>),
}

impl Acc {
    const INLINE: usize = 22;

    fn new(value: &[u8]) -> Acc {
        if value.len() <= Self::INLINE {
            let mut b = [0; Self::INLINE];
            b[..value.len()].copy_from_slice(value);
            Acc::Inline(value.len() as u8, b)
        } else {
            Acc::Heap(value.into())
        }
    }

    #[inline]
    fn bytes(&self) -> &[u8] {
        match self {
            Acc::Inline(n, b) => &b[..*n as usize],
            Acc::Heap(b) => b,
        }
    }

    #[inline]
    fn set(&mut self, value: &[u8]) {
        match self {
            Acc::Inline(n, b) if value.len() <= Self::INLINE => {
                b[..value.len()].copy_from_slice(value);
                *n = value.len() as u8;
            }
            Acc::Heap(b) if b.len() == value.len() => b.copy_from_slice(value),
            _ => *self = Acc::new(value),
        }
    }
}

#[derive(Debug)]
struct KeyWindows {
    key: Box<[u8]>,
    group: KeyGroup,
    hash: u64,
    /// Open windows in insertion order (a key has few: those the watermark
    /// has not passed yet).
    windows: Vec<(Window, Acc)>,
    /// The sweep epoch of the last write.
    used: u32,
    /// On the idle list.
    queued: bool,
}

/// The accumulators of one window operator subtask, by key and window.
#[derive(Debug, Default)]
pub struct PaneTable {
    hasher: KeyHasher,
    index: HashTable<Slot>,
    slots: Vec<Option<KeyWindows>>,
    free: Vec<Slot>,
    /// Slots whose last window was removed: kept (a key usually comes back
    /// in the next window), freed by [`Self::sweep`] once idle for a while.
    idle: Vec<Slot>,
    epoch: u32,
    bytes: usize,
    account: StateAccount,
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
        self.hasher.hash_one(key)
    }

    fn live(&self, slot: Slot) -> Option<&KeyWindows> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    /// The slot of `key` (hashed by [`Self::hash`]), if it has any window.
    #[inline]
    pub fn find(&self, hash: u64, key: &[u8]) -> Option<Slot> {
        let slots = &self.slots;
        self.index
            .find(hash, |&s| slots[s as usize].as_ref().is_some_and(|k| *k.key == *key))
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
            key: key.into(),
            group,
            hash,
            windows: Vec::new(),
            used: self.epoch,
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
                k.windows.push((*w, Acc::new(value)));
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
        let (hash, len) = (k.hash, k.key.len());
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
            .flat_map(|k| k.windows.iter().map(move |(w, a)| (k.group, &*k.key, w, a.bytes())))
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
