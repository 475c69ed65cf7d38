//! `sluice bench batch`: the bounded windowed word count of `bench e2e`
//! (the same CSV file, job and sink) run in streaming mode and in batch
//! mode, beside the plain-Rust loop over the same file:
//!
//! ```text
//! bench=batch events=N rows=R streaming_events_per_cpu_s=S streaming_peak_rss_mb=A
//!     batch_events_per_cpu_s=B batch_peak_rss_mb=C native_events_per_cpu_s=Y
//! ```
//!
//! Each side runs `runs` times (alternately), keeping its least CPU time;
//! both modes must write the same number of window results as the native
//! loop counts.

use std::path::Path;
use std::sync::Arc;

use anyhow::bail;

use super::e2e::{Side, measure_native, measure_sluice, with_words};
use crate::wasm::WasmEngine;

/// Run it over `events` lines.
pub fn run(engine: &Arc<WasmEngine>, events: u64, udfs: &Path, runs: u32) -> anyhow::Result<String> {
    with_words(udfs, "batch", events, runs, |dir, csv, component| {
        let best = |a: Option<Side>, b: Side| match a {
            Some(a) if a.cpu <= b.cpu => Some(a),
            _ => Some(b),
        };
        let (mut native, mut streaming, mut batch) = (None, None, None);
        for _ in 0..runs {
            native = best(native, measure_native(csv)?);
            streaming = best(streaming, measure_sluice(engine, dir, csv, component, false)?);
            batch = best(batch, measure_sluice(engine, dir, csv, component, true)?);
        }
        let (Some(native), Some(streaming), Some(batch)) = (native, streaming, batch) else {
            bail!("nothing was measured");
        };
        for (mode, side) in [("streaming", &streaming), ("batch", &batch)] {
            if side.rows != native.rows {
                bail!(
                    "in {mode} mode the job wrote {} window results, the native loop counted {}",
                    side.rows,
                    native.rows
                );
            }
        }
        let per_cpu = |s: &Side| events as f64 / s.cpu;
        Ok(format!(
            "bench=batch events={events} runs={runs} rows={} streaming_events_per_cpu_s={:.0} streaming_peak_rss_mb={:.1} \
             batch_events_per_cpu_s={:.0} batch_peak_rss_mb={:.1} native_events_per_cpu_s={:.0} native_peak_rss_mb={:.1}",
            native.rows,
            per_cpu(&streaming),
            streaming.peak_mb,
            per_cpu(&batch),
            batch.peak_mb,
            per_cpu(&native),
            native.peak_mb
        ))
    })
}
