//! The heap state backend: keyed state of one subtask in memory.
//!
//! Addressing is (key group, key, state, user key) → value; the operator is
//! implicit because each subtask of each operator owns one backend. Entries
//! are grouped by key group so a snapshot can be written, and restored at
//! another parallelism, one key group at a time.
//!
//! Layout: per key group a hash map from key to that key's states; per
//! (key, state) either a single entry (the common value state, no tree node
//! allocated) or a sorted map (map and list states, prefix scans). A list
//! state append is one insert: O(log n) in the list length at worst, O(1)
//! host calls.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use super::KeyHasher;
use super::key_group::{KeyGroup, KeyGroupRange};
use crate::tenancy::{StateAccount, StateBudget, StateLimitExceeded};

/// A state declared on a backend, by name; ids are dense and stable for the
/// backend's lifetime.
pub type StateId = u32;

/// Longest state name accepted.
pub const MAX_STATE_NAME: usize = 256;
/// Bytes counted per entry beyond its user key and value: its two heap
/// allocations and its share of a map node. Counted so that many small
/// entries are charged near what they cost, not just their payload.
pub const ENTRY_OVERHEAD: usize = 64;
/// Bytes counted per key beyond its bytes: its hash-map slot, allocation and
/// state list.
pub const KEY_OVERHEAD: usize = 96;

/// Why a state request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The name is empty or too long.
    #[error("invalid state name {0:?}: names are 1 to 256 bytes")]
    InvalidName(String),
    /// The id was never declared.
    #[error("unknown state id {0}")]
    UnknownState(StateId),
    /// The key group is not owned by this backend (a partitioning bug).
    #[error("key group {group} is outside this subtask's range {start}..={end}")]
    ForeignKeyGroup {
        /// The group asked for.
        group: u32,
        /// First owned group.
        start: u32,
        /// Last owned group.
        end: u32,
    },
    /// The write would take the job's or tenant's state over its ceiling.
    #[error(transparent)]
    QuotaExceeded(#[from] StateLimitExceeded),
}

#[derive(Debug, Default)]
enum Entries {
    #[default]
    Empty,
    One(Box<[u8]>, Box<[u8]>),
    Many(BTreeMap<Box<[u8]>, Box<[u8]>>),
}

impl Entries {
    fn get(&self, user_key: &[u8]) -> Option<&[u8]> {
        match self {
            Entries::Empty => None,
            Entries::One(k, v) => (**k == *user_key).then_some(&**v),
            Entries::Many(m) => m.get(user_key).map(|v| &**v),
        }
    }

    /// Insert; returns the size change in bytes.
    fn put(&mut self, user_key: &[u8], value: &[u8]) -> isize {
        match self {
            Entries::Empty => {
                *self = Entries::One(user_key.into(), value.into());
                (user_key.len() + value.len() + ENTRY_OVERHEAD) as isize
            }
            Entries::One(k, v) if **k == *user_key => overwrite(v, value),
            Entries::One(..) => {
                let Entries::One(k, v) = std::mem::take(self) else { unreachable!() };
                let mut m = BTreeMap::new();
                m.insert(k, v);
                m.insert(user_key.into(), value.into());
                *self = Entries::Many(m);
                (user_key.len() + value.len() + ENTRY_OVERHEAD) as isize
            }
            Entries::Many(m) => match m.get_mut(user_key) {
                Some(v) => overwrite(v, value),
                None => {
                    m.insert(user_key.into(), value.into());
                    (user_key.len() + value.len() + ENTRY_OVERHEAD) as isize
                }
            },
        }
    }

    fn delete(&mut self, user_key: &[u8]) -> isize {
        match self {
            Entries::One(k, v) if **k == *user_key => {
                let freed = (k.len() + v.len() + ENTRY_OVERHEAD) as isize;
                *self = Entries::Empty;
                -freed
            }
            Entries::Many(m) => match m.remove_entry(user_key) {
                Some((k, v)) => -((k.len() + v.len() + ENTRY_OVERHEAD) as isize),
                None => 0,
            },
            _ => 0,
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Entries::Empty => true,
            Entries::One(..) => false,
            Entries::Many(m) => m.is_empty(),
        }
    }

    fn bytes(&self) -> usize {
        self.iter().map(|(k, v)| k.len() + v.len() + ENTRY_OVERHEAD).sum()
    }

    fn iter(&self) -> Box<dyn Iterator<Item = (&[u8], &[u8])> + '_> {
        match self {
            Entries::Empty => Box::new(std::iter::empty()),
            Entries::One(k, v) => Box::new(std::iter::once((&**k, &**v))),
            Entries::Many(m) => Box::new(m.iter().map(|(k, v)| (&**k, &**v))),
        }
    }

    /// Entries with user keys starting with `prefix`, after `start_after`.
    fn range<'a>(&'a self, prefix: &'a [u8], start_after: Option<&'a [u8]>) -> Box<dyn Iterator<Item = (&'a [u8], &'a [u8])> + 'a> {
        let after_ok = move |k: &[u8]| start_after.is_none_or(|a| k > a);
        match self {
            Entries::Many(m) => {
                let lower = match start_after {
                    Some(a) if a >= prefix => Bound::Excluded(a),
                    _ => Bound::Included(prefix),
                };
                Box::new(
                    m.range::<[u8], _>((lower, Bound::Unbounded))
                        .map(|(k, v)| (&**k, &**v))
                        .take_while(move |(k, _)| k.starts_with(prefix)),
                )
            }
            _ => Box::new(self.iter().filter(move |(k, _)| k.starts_with(prefix) && after_ok(k))),
        }
    }
}

/// Replace a stored value, in place when the size is unchanged (counters,
/// accumulators); returns the size change in bytes.
#[inline]
fn overwrite(slot: &mut Box<[u8]>, value: &[u8]) -> isize {
    if slot.len() == value.len() {
        slot.copy_from_slice(value);
        return 0;
    }
    let delta = value.len() as isize - slot.len() as isize;
    *slot = value.into();
    delta
}

/// The states of one key: few per key, so a small vector beats a map.
#[derive(Debug, Default)]
struct KeyStates {
    states: Vec<(StateId, Entries)>,
}

impl KeyStates {
    fn entries(&self, id: StateId) -> Option<&Entries> {
        self.states.iter().find(|(s, _)| *s == id).map(|(_, e)| e)
    }

    fn entries_mut(&mut self, id: StateId) -> &mut Entries {
        let pos = match self.states.iter().position(|(s, _)| *s == id) {
            Some(p) => p,
            None => {
                self.states.push((id, Entries::Empty));
                self.states.len() - 1
            }
        };
        &mut self.states[pos].1
    }

    fn prune(&mut self) {
        self.states.retain(|(_, e)| !e.is_empty());
    }
}

type KeyMap = HashMap<Box<[u8]>, KeyStates, KeyHasher>;

/// Entries taken out of a backend: (key group, key, user key, value).
pub type TakenEntries = Vec<(KeyGroup, Box<[u8]>, Box<[u8]>, Box<[u8]>)>;

/// One entry of a backend, as exposed for snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateEntry<'a> {
    /// The record key.
    pub key: &'a [u8],
    /// The state's name.
    pub state: &'a str,
    /// The user key within the state (empty for a value state).
    pub user_key: &'a [u8],
    /// The value.
    pub value: &'a [u8],
}

/// A page of a prefix scan.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Page {
    /// (user key, value) pairs in ascending user-key order.
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
    /// Where the next page starts (exclusive), if there is one.
    pub next: Option<Vec<u8>>,
}

/// Keyed state of one subtask, held on the heap.
#[derive(Debug)]
pub struct HeapKeyedState {
    range: KeyGroupRange,
    groups: Vec<KeyMap>,
    names: Vec<String>,
    bytes: usize,
    account: StateAccount,
}

impl HeapKeyedState {
    /// An empty backend owning `range`.
    pub fn new(range: KeyGroupRange) -> Self {
        HeapKeyedState {
            range,
            groups: (0..range.len()).map(|_| KeyMap::default()).collect(),
            names: Vec::new(),
            bytes: 0,
            account: StateAccount::default(),
        }
    }

    /// An empty backend owning `range` whose growth is charged to `budget`:
    /// a write that would cross the job's or tenant's ceiling fails with
    /// [`StateError::QuotaExceeded`] before anything is stored.
    pub fn with_budget(range: KeyGroupRange, budget: Option<StateBudget>) -> Self {
        let mut b = Self::new(range);
        if let Some(budget) = budget {
            b.account = StateAccount::new(budget);
        }
        b
    }

    /// The budget this backend's growth is charged to (timers of the same
    /// operator draw on it too).
    pub fn budget(&self) -> Option<StateBudget> {
        self.account.budget().cloned()
    }

    /// The key groups this backend owns.
    pub fn key_group_range(&self) -> KeyGroupRange {
        self.range
    }

    /// Approximate bytes held: keys, user keys and values, plus
    /// [`KEY_OVERHEAD`] per key and [`ENTRY_OVERHEAD`] per entry.
    pub fn size_bytes(&self) -> usize {
        self.bytes
    }

    /// Declare a state by name; the same name always gets the same id.
    pub fn declare(&mut self, name: &str) -> Result<StateId, StateError> {
        if name.is_empty() || name.len() > MAX_STATE_NAME {
            return Err(StateError::InvalidName(name.chars().take(64).collect()));
        }
        if let Some(i) = self.names.iter().position(|n| n == name) {
            return Ok(i as StateId);
        }
        self.names.push(name.to_owned());
        Ok((self.names.len() - 1) as StateId)
    }

    /// The name of a declared state.
    pub fn state_name(&self, id: StateId) -> Option<&str> {
        self.names.get(id as usize).map(String::as_str)
    }

    fn check(&self, group: KeyGroup, id: StateId) -> Result<usize, StateError> {
        if id as usize >= self.names.len() {
            return Err(StateError::UnknownState(id));
        }
        if !self.range.contains(group) {
            return Err(StateError::ForeignKeyGroup {
                group: group.0,
                start: self.range.start,
                end: self.range.end,
            });
        }
        Ok((group.0 - self.range.start) as usize)
    }

    /// Read one value.
    pub fn get(&self, group: KeyGroup, key: &[u8], id: StateId, user_key: &[u8]) -> Result<Option<&[u8]>, StateError> {
        let g = self.check(group, id)?;
        Ok(self.groups[g].get(key).and_then(|k| k.entries(id)).and_then(|e| e.get(user_key)))
    }

    /// Write one value.
    pub fn put(&mut self, group: KeyGroup, key: &[u8], id: StateId, user_key: &[u8], value: &[u8]) -> Result<(), StateError> {
        let g = self.check(group, id)?;
        let map = &mut self.groups[g];
        // The most this write can add, covered before anything is stored.
        let entry_cost = user_key.len() + value.len() + ENTRY_OVERHEAD;
        let states = match map.get_mut(key) {
            Some(s) => {
                self.account.cover(self.bytes.saturating_add(entry_cost) as u64)?;
                s
            }
            None => {
                let key_cost = key.len() + KEY_OVERHEAD;
                self.account.cover(self.bytes.saturating_add(key_cost + entry_cost) as u64)?;
                self.bytes += key_cost;
                map.entry(key.into()).or_default()
            }
        };
        let delta = states.entries_mut(id).put(user_key, value);
        self.bytes = self.bytes.saturating_add_signed(delta);
        Ok(())
    }

    /// Delete one value (missing is fine).
    pub fn delete(&mut self, group: KeyGroup, key: &[u8], id: StateId, user_key: &[u8]) -> Result<(), StateError> {
        let g = self.check(group, id)?;
        let map = &mut self.groups[g];
        if let Some(states) = map.get_mut(key) {
            let delta = states.entries_mut(id).delete(user_key);
            self.bytes = self.bytes.saturating_add_signed(delta);
            states.prune();
            if states.states.is_empty() {
                map.remove(key);
                self.bytes = self.bytes.saturating_sub(key.len() + KEY_OVERHEAD);
            }
            self.account.shrink_to(self.bytes as u64);
        }
        Ok(())
    }

    /// Delete every entry of one state of one key.
    pub fn clear(&mut self, group: KeyGroup, key: &[u8], id: StateId) -> Result<(), StateError> {
        let g = self.check(group, id)?;
        let map = &mut self.groups[g];
        if let Some(states) = map.get_mut(key) {
            let freed = states.entries(id).map_or(0, Entries::bytes);
            *states.entries_mut(id) = Entries::Empty;
            self.bytes = self.bytes.saturating_sub(freed);
            states.prune();
            if states.states.is_empty() {
                map.remove(key);
                self.bytes = self.bytes.saturating_sub(key.len() + KEY_OVERHEAD);
            }
            self.account.shrink_to(self.bytes as u64);
        }
        Ok(())
    }

    /// One page of the entries of `id` for `key` whose user keys start with
    /// `prefix`, after `start_after`: at most `limit` entries and about
    /// `max_bytes` bytes (always at least one entry when any remains).
    #[allow(clippy::too_many_arguments)]
    pub fn scan(
        &self,
        group: KeyGroup,
        key: &[u8],
        id: StateId,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Page, StateError> {
        let g = self.check(group, id)?;
        let Some(entries) = self.groups[g].get(key).and_then(|k| k.entries(id)) else {
            return Ok(Page::default());
        };
        let mut page = Page::default();
        let mut bytes = 0;
        let mut it = entries.range(prefix, start_after).peekable();
        while let Some((k, v)) = it.next() {
            page.entries.push((k.to_vec(), v.to_vec()));
            bytes += k.len() + v.len();
            if page.entries.len() >= limit.max(1) || bytes >= max_bytes {
                if it.peek().is_some() {
                    page.next = Some(k.to_vec());
                }
                break;
            }
        }
        Ok(page)
    }

    /// Every entry of one key group (for snapshots), keys in no particular order.
    pub fn entries_in_group(&self, group: KeyGroup) -> impl Iterator<Item = StateEntry<'_>> {
        let map = self
            .range
            .contains(group)
            .then(|| &self.groups[(group.0 - self.range.start) as usize]);
        map.into_iter().flat_map(move |m| {
            m.iter().flat_map(move |(key, states)| {
                states.states.iter().flat_map(move |(id, entries)| {
                    let state = self.names[*id as usize].as_str();
                    entries.iter().map(move |(user_key, value)| StateEntry {
                        key,
                        state,
                        user_key,
                        value,
                    })
                })
            })
        })
    }

    /// Call `f(key, state id, user key, value)` for every entry of one key
    /// group: the snapshot path, without an iterator per key.
    pub fn for_each_in_group(&self, group: KeyGroup, mut f: impl FnMut(&[u8], StateId, &[u8], &[u8])) {
        if !self.range.contains(group) {
            return;
        }
        for (key, states) in &self.groups[(group.0 - self.range.start) as usize] {
            for (id, entries) in &states.states {
                match entries {
                    Entries::Empty => {}
                    Entries::One(k, v) => f(key, *id, k, v),
                    Entries::Many(m) => {
                        for (k, v) in m {
                            f(key, *id, k, v);
                        }
                    }
                }
            }
        }
    }

    /// Remove every entry of state `id` and hand them over as (key group,
    /// key, user key, value): an operator moving a state it restored into
    /// a typed table of its own.
    pub fn take_state(&mut self, id: StateId) -> TakenEntries {
        let mut taken = Vec::new();
        for (i, map) in self.groups.iter_mut().enumerate() {
            let group = KeyGroup(self.range.start + i as u32);
            map.retain(|key, states| {
                if let Some(pos) = states.states.iter().position(|(s, _)| *s == id) {
                    let (_, entries) = states.states.swap_remove(pos);
                    let pairs: Box<dyn Iterator<Item = _>> = match entries {
                        Entries::Empty => Box::new(std::iter::empty()),
                        Entries::One(k, v) => Box::new(std::iter::once((k, v))),
                        Entries::Many(m) => Box::new(m.into_iter()),
                    };
                    for (k, v) in pairs {
                        self.bytes = self.bytes.saturating_sub(k.len() + v.len() + ENTRY_OVERHEAD);
                        taken.push((group, key.clone(), k, v));
                    }
                }
                if states.states.is_empty() {
                    self.bytes = self.bytes.saturating_sub(key.len() + KEY_OVERHEAD);
                    return false;
                }
                true
            });
        }
        self.account.shrink_to(self.bytes as u64);
        taken
    }

    /// Drop every key's state (batch mode, once the keys in hand are done).
    pub fn clear_all(&mut self) {
        for map in &mut self.groups {
            if !map.is_empty() {
                map.clear();
            }
        }
        self.bytes = 0;
        self.account.shrink_to(0);
    }

    /// Number of keys with any state.
    pub fn key_count(&self) -> usize {
        self.groups.iter().map(HashMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> (HeapKeyedState, StateId) {
        let mut b = HeapKeyedState::new(KeyGroupRange::for_subtask(128, 1, 0));
        let id = b.declare("s").unwrap();
        (b, id)
    }

    #[test]
    fn keys_are_isolated() {
        let (mut b, id) = backend();
        let (ga, gb) = (KeyGroup::of(b"a", 128), KeyGroup::of(b"b", 128));
        b.put(ga, b"a", id, b"", b"1").unwrap();
        b.put(gb, b"b", id, b"", b"2").unwrap();
        assert_eq!(b.get(ga, b"a", id, b"").unwrap(), Some(&b"1"[..]));
        assert_eq!(b.get(gb, b"b", id, b"").unwrap(), Some(&b"2"[..]));
        b.delete(ga, b"a", id, b"").unwrap();
        assert_eq!(b.get(ga, b"a", id, b"").unwrap(), None);
        assert_eq!(b.get(gb, b"b", id, b"").unwrap(), Some(&b"2"[..]));
        assert_eq!(b.key_count(), 1);
    }

    #[test]
    fn scan_pages_through_everything_once_in_order() {
        let (mut b, id) = backend();
        let g = KeyGroup::of(b"k", 128);
        for i in 0..1000u32 {
            b.put(g, b"k", id, &[&[1u8][..], &i.to_be_bytes()].concat(), &i.to_le_bytes())
                .unwrap();
        }
        b.put(g, b"k", id, b"", b"meta").unwrap();
        let mut seen = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        let mut pages = 0;
        loop {
            let p = b.scan(g, b"k", id, &[1], after.as_deref(), 64, usize::MAX).unwrap();
            pages += 1;
            assert!(p.entries.len() <= 64);
            seen.extend(p.entries.iter().map(|(k, _)| u32::from_be_bytes(k[1..].try_into().unwrap())));
            match p.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
        assert_eq!(pages, 16);
        // A byte cap cuts pages short but never returns an empty page.
        let p = b.scan(g, b"k", id, &[1], None, 1000, 1).unwrap();
        assert_eq!(p.entries.len(), 1);
        assert!(p.next.is_some());
    }

    #[test]
    fn snapshot_view_and_size_accounting() {
        let (mut b, id) = backend();
        let other = b.declare("t").unwrap();
        assert_eq!(b.declare("s").unwrap(), id);
        let g = KeyGroup::of(b"k", 128);
        b.put(g, b"k", id, b"x", b"12").unwrap();
        b.put(g, b"k", other, b"", b"3").unwrap();
        let mut e: Vec<_> = b
            .entries_in_group(g)
            .map(|e| (e.state.to_owned(), e.user_key.to_vec(), e.value.to_vec()))
            .collect();
        e.sort();
        assert_eq!(
            e,
            vec![("s".into(), b"x".to_vec(), b"12".to_vec()), ("t".into(), vec![], b"3".to_vec())]
        );
        assert_eq!(b.size_bytes(), (1 + KEY_OVERHEAD) + (3 + ENTRY_OVERHEAD) + (1 + ENTRY_OVERHEAD));
        b.clear(g, b"k", id).unwrap();
        b.clear(g, b"k", other).unwrap();
        assert_eq!(b.size_bytes(), 0);
        assert_eq!(b.key_count(), 0);
        assert!(matches!(b.get(g, b"k", 7, b""), Err(StateError::UnknownState(7))));
    }

    #[test]
    fn a_write_over_the_budget_fails_before_it_is_stored() {
        let limit = 2 * crate::tenancy::StateAccount::CHUNK;
        let budget = StateBudget::new(Some(limit), None);
        let mut b = HeapKeyedState::with_budget(KeyGroupRange::for_subtask(128, 1, 0), Some(budget.clone()));
        let id = b.declare("s").unwrap();
        let g = KeyGroup::of(b"k", 128);
        // Many small entries are charged their overhead too.
        let mut n = 0u32;
        let err = loop {
            match b.put(g, b"k", id, &n.to_be_bytes(), b"v") {
                Ok(()) => n += 1,
                Err(e) => break e,
            }
            assert!(n < 100_000, "the budget never refused");
        };
        assert!(matches!(err, StateError::QuotaExceeded(_)), "{err}");
        assert!(err.to_string().contains("state size limit exceeded"), "{err}");
        assert_eq!(n as usize, (limit as usize - 1 - KEY_OVERHEAD) / (4 + 1 + ENTRY_OVERHEAD));
        assert!(b.size_bytes() as u64 <= limit);
        assert_eq!(
            b.get(g, b"k", id, &n.to_be_bytes()).unwrap(),
            None,
            "nothing of the refused write is stored"
        );
        // One value bigger than the whole budget is refused at once.
        let big = vec![0u8; limit as usize];
        assert!(b.put(g, b"other", id, b"", &big).is_err());
        // Deleting gives room back.
        b.clear(g, b"k", id).unwrap();
        b.put(g, b"k", id, b"", b"v").unwrap();
        drop(b);
        assert_eq!(budget.job_bytes(), 0);
    }
}
