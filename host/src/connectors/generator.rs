//! A deterministic generator: record `i` is a pure function of the seed and
//! `i`, so any parallelism produces the same records, and a benchmark or
//! test can recompute the expected output independently.
//!
//! Subtask `s` of `p` produces the records `s, s + p, s + 2p, …`. With `keys`
//! set, record `i` has key `key-<k>` with `k` drawn uniformly or by Zipf
//! (exponent 1); its value is `value_size` lowercase letters.

use sluice_guest::batch::BatchWriter;

use super::{ConnectorError, SourceReader, Strided};
use crate::spec::Distribution;
use crate::types::RecordBatch;

/// Settings of a generator source.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratorConfig {
    /// Records in all.
    pub count: u64,
    /// Distinct keys; none: no keys.
    pub keys: Option<u64>,
    /// How keys are drawn.
    pub distribution: Distribution,
    /// Bytes per value.
    pub value_size: usize,
    /// Seed.
    pub seed: u64,
    /// Event times: this many records per event-time second, in order.
    pub events_per_second: Option<u64>,
    /// Event time of record 0 (with `events_per_second`).
    pub start_time_ms: i64,
}

impl GeneratorConfig {
    /// The event time of record `i`, if records have event times.
    #[inline]
    pub fn timestamp(&self, i: u64) -> Option<i64> {
        let eps = self.events_per_second?;
        let ms = (u128::from(i) * 1000 / u128::from(eps.max(1))).min(i64::MAX as u128) as i64;
        Some(self.start_time_ms.saturating_add(ms))
    }
}

/// SplitMix64: a tiny, well-mixed, stable PRNG step.
#[inline]
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Most keys a Zipf generator draws from: each subtask holds a table of one
/// `f64` per key (8 MiB at the limit).
pub const MAX_ZIPF_KEYS: u64 = 1 << 20;

/// Draws key indices for a generator; shared with benchmarks' native baselines.
#[derive(Debug, Clone)]
pub struct KeyChooser {
    keys: u64,
    /// Zipf: cumulative probabilities of keys 0..n.
    cdf: Option<Vec<f64>>,
}

impl KeyChooser {
    /// A chooser over `keys` keys.
    pub fn new(keys: u64, distribution: Distribution) -> Self {
        let cdf = (distribution == Distribution::Zipf).then(|| {
            let mut acc = 0.0;
            // Validation caps `keys`; the cap here keeps any caller bounded.
            let mut cdf: Vec<f64> = (1..=keys.min(MAX_ZIPF_KEYS))
                .map(|k| {
                    acc += 1.0 / k as f64;
                    acc
                })
                .collect();
            for c in &mut cdf {
                *c /= acc;
            }
            cdf
        });
        KeyChooser { keys: keys.max(1), cdf }
    }

    /// The key index for random draw `r`.
    #[inline]
    pub fn choose(&self, r: u64) -> u64 {
        match &self.cdf {
            None => r % self.keys,
            Some(cdf) => {
                let u = (r >> 11) as f64 / (1u64 << 53) as f64;
                cdf.partition_point(|&c| c < u).min(cdf.len() - 1) as u64
            }
        }
    }
}

/// One generator subtask.
pub struct Generator {
    config: GeneratorConfig,
    chooser: Option<KeyChooser>,
    records: Strided,
    key: Vec<u8>,
}

impl Generator {
    /// Subtask `subtask` of `parallelism`.
    pub fn new(config: GeneratorConfig, subtask: u32, parallelism: u32) -> Self {
        let chooser = config.keys.map(|k| KeyChooser::new(k, config.distribution));
        Generator {
            records: Strided::new("generator", subtask, parallelism, config.count),
            config,
            chooser,
            key: Vec::new(),
        }
    }

    /// Write record `i` into `w` (also used by benchmarks' baselines).
    pub fn record(config: &GeneratorConfig, chooser: Option<&KeyChooser>, i: u64, key: &mut Vec<u8>, w: &mut BatchWriter) {
        let r = splitmix64(config.seed ^ i.wrapping_mul(0x2545_F491_4F6C_DD1D));
        let key = chooser.map(|c| {
            key.clear();
            key.extend_from_slice(b"key-");
            key.extend_from_slice(c.choose(r).to_string().as_bytes());
            &key[..]
        });
        let size = config.value_size;
        w.push_with(key, config.timestamp(i), |buf| {
            let mut x = r;
            for _ in 0..size {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                buf.push(b'a' + ((x >> 59) as u8 % 26));
            }
        });
    }
}

impl SourceReader for Generator {
    fn next_batch(&mut self, max_records: usize) -> Result<Option<RecordBatch>, ConnectorError> {
        let (config, chooser, key) = (&self.config, self.chooser.as_ref(), &mut self.key);
        Ok(self
            .records
            .batch(max_records, config.value_size + 24, |i, w| Self::record(config, chooser, i, key, w)))
    }

    fn position(&self) -> Vec<u8> {
        self.records.position()
    }

    fn seek(&mut self, position: &[u8]) -> Result<(), ConnectorError> {
        self.records.seek(position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Row = (Option<i64>, Option<Vec<u8>>, Vec<u8>);

    fn all(parallelism: u32) -> Vec<Row> {
        let config = GeneratorConfig {
            count: 1000,
            keys: Some(50),
            distribution: Distribution::Zipf,
            value_size: 10,
            seed: 7,
            events_per_second: Some(100),
            start_time_ms: 5,
        };
        let mut out = Vec::new();
        for s in 0..parallelism {
            let mut g = Generator::new(config.clone(), s, parallelism);
            while let Some(b) = g.next_batch(64).unwrap() {
                out.extend(b.records().map(|r| (r.timestamp, r.key.map(<[u8]>::to_vec), r.value.to_vec())));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn big_values_in_huge_batches_stay_bounded() {
        let config = GeneratorConfig {
            count: 3,
            keys: None,
            distribution: Distribution::Uniform,
            value_size: 16 << 20,
            seed: 1,
            events_per_second: None,
            start_time_ms: 0,
        };
        let mut g = Generator::new(config, 0, 1);
        let mut batches = 0;
        while let Some(b) = g.next_batch(1 << 20).unwrap() {
            // Reserved for what is left (not 2^20 records), cut at 16 MiB.
            assert_eq!(b.len, 1);
            assert!(b.bytes.capacity() < 2 * crate::connectors::SOURCE_BATCH_BYTES);
            batches += 1;
        }
        assert_eq!(batches, 3);
    }

    #[test]
    fn same_records_at_any_parallelism() {
        let one = all(1);
        assert_eq!(one.len(), 1000);
        assert_eq!(one, all(3));
        assert_eq!((one[0].0, one[999].0), (Some(5), Some(5 + 9990)));
    }

    #[test]
    fn zipf_is_skewed() {
        let c = KeyChooser::new(1000, Distribution::Zipf);
        let hot = (0..100_000u64).filter(|&i| c.choose(splitmix64(i)) == 0).count();
        // P(key 0) = 1 / H(1000) ≈ 0.134.
        assert!((12_000..15_000).contains(&hot), "{hot}");
    }
}
