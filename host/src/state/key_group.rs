//! Key groups: the unit of keyed-state partitioning and rescaling, assigned
//! exactly as Flink assigns them (`KeyGroupRangeAssignment`).
//!
//! A key's group is `hash(key) % max_parallelism`; subtask `i` of an operator
//! with parallelism `p` owns the contiguous range of groups computed by
//! [`KeyGroupRange::for_subtask`], and a group maps back to its subtask by
//! `group * p / max_parallelism`. The hash is xxh3-64 of the key bytes: stable
//! across platforms and releases, because checkpoints depend on it.

use std::fmt;

/// Flink's default upper bound on parallelism, and the number of key groups.
pub const DEFAULT_MAX_PARALLELISM: u32 = 128;

/// A key group id, `0 <= id < max_parallelism`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyGroup(pub u32);

impl fmt::Display for KeyGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl KeyGroup {
    /// The key group of `key`.
    #[inline]
    pub fn of(key: &[u8], max_parallelism: u32) -> KeyGroup {
        Self::of_hash(xxhash_rust::xxh3::xxh3_64(key), max_parallelism)
    }

    /// The key group of a key whose xxh3 hash is `hash`.
    #[inline]
    pub fn of_hash(hash: u64, max_parallelism: u32) -> KeyGroup {
        KeyGroup((hash % u64::from(max_parallelism.max(1))) as u32)
    }

    /// The subtask that owns this group.
    #[inline]
    pub fn subtask(self, max_parallelism: u32, parallelism: u32) -> u32 {
        ((u64::from(self.0) * u64::from(parallelism)) / u64::from(max_parallelism.max(1))) as u32
    }
}

/// An inclusive range of key groups owned by one subtask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyGroupRange {
    /// First group.
    pub start: u32,
    /// Last group (inclusive). `end < start` means empty.
    pub end: u32,
}

impl KeyGroupRange {
    /// The groups of subtask `index` of `parallelism` (Flink's
    /// `computeKeyGroupRangeForOperatorIndex`).
    pub fn for_subtask(max_parallelism: u32, parallelism: u32, index: u32) -> KeyGroupRange {
        let (m, p, i) = (u64::from(max_parallelism), u64::from(parallelism.max(1)), u64::from(index));
        let start = (i * m).div_ceil(p);
        let end = ((i + 1) * m - 1) / p;
        KeyGroupRange {
            start: start as u32,
            end: end as u32,
        }
    }

    /// Number of groups.
    pub fn len(&self) -> usize {
        if self.end < self.start {
            0
        } else {
            (self.end - self.start + 1) as usize
        }
    }

    /// True when the range holds no group.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when `g` is in the range.
    pub fn contains(&self, g: KeyGroup) -> bool {
        g.0 >= self.start && g.0 <= self.end
    }

    /// The groups in order.
    pub fn iter(&self) -> impl Iterator<Item = KeyGroup> {
        (self.start..=self.end).filter(|_| !self.is_empty()).map(KeyGroup)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn matches_flink_ranges() {
        // Flink: maxParallelism 128, parallelism 3 -> [0,42], [43,85], [86,127].
        assert_eq!(KeyGroupRange::for_subtask(128, 3, 0), KeyGroupRange { start: 0, end: 42 });
        assert_eq!(KeyGroupRange::for_subtask(128, 3, 1), KeyGroupRange { start: 43, end: 85 });
        assert_eq!(KeyGroupRange::for_subtask(128, 3, 2), KeyGroupRange { start: 86, end: 127 });
        assert_eq!(KeyGroupRange::for_subtask(128, 1, 0).len(), 128);
    }

    proptest! {
        /// Every key maps to exactly one subtask, whose range holds its group,
        /// for any parallelism up to the maximum.
        #[test]
        fn every_key_has_exactly_one_owner(
            max in 1u32..=512,
            p_frac in 0.0f64..1.0,
            keys in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..24), 1..64),
        ) {
            let p = ((f64::from(max) * p_frac) as u32).clamp(1, max);
            let ranges: Vec<_> = (0..p).map(|i| KeyGroupRange::for_subtask(max, p, i)).collect();
            // The ranges tile [0, max) without gaps or overlaps.
            let total: usize = ranges.iter().map(KeyGroupRange::len).sum();
            prop_assert_eq!(total, max as usize);
            for key in keys {
                let g = KeyGroup::of(&key, max);
                prop_assert!(g.0 < max);
                let owners: Vec<_> = ranges.iter().enumerate().filter(|(_, r)| r.contains(g)).map(|(i, _)| i as u32).collect();
                prop_assert_eq!(owners.len(), 1);
                prop_assert_eq!(owners[0], g.subtask(max, p));
            }
        }
    }
}
