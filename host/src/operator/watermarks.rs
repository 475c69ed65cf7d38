//! The watermark assigner (Flink's timestamps-and-watermarks operator).

use std::sync::Arc;

use sluice_guest::batch::BatchWriter;

use super::{Emit, Operator, TaskError};
use crate::types::RecordBatch;
use crate::wasm::GuestInstance;

/// Generates watermarks from the timestamps of the records passing through
/// (Flink's timestamps-and-watermarks operator): first in a source's chain,
/// or after a stateless operator that assigns timestamps. Upstream
/// watermarks are replaced, except the final one at the end of input.
pub(crate) struct WatermarkAssigner {
    pub periodic: Option<crate::time::PeriodicWatermarks>,
    pub punctuated: Option<GuestInstance>,
    pub clock: Arc<dyn crate::time::Clock>,
    pub emitted: Option<i64>,
}

impl WatermarkAssigner {
    fn forward(&mut self, wm: i64, out: &mut dyn Emit) -> Result<(), TaskError> {
        if self.emitted.is_none_or(|e| wm > e) {
            self.emitted = Some(wm);
            out.watermark(wm)?;
        }
        Ok(())
    }
}

impl Operator for WatermarkAssigner {
    fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut dyn Emit) -> Result<(), TaskError> {
        if let Some(guest) = &mut self.punctuated {
            let marks = guest.punctuate(&batch.bytes)?;
            if marks.is_empty() {
                return out.emit(batch);
            }
            let mut part = BatchWriter::new();
            let mut marks = marks.into_iter().peekable();
            for (i, r) in batch.records().enumerate() {
                part.push_ref(&r);
                while let Some(&(_, wm)) = marks.peek().filter(|(after, _)| *after as usize == i) {
                    marks.next();
                    let len = part.len();
                    if len > 0 {
                        out.emit(RecordBatch { bytes: part.take(), len })?;
                    }
                    self.forward(wm, out)?;
                }
            }
            let len = part.len();
            return out.emit(RecordBatch { bytes: part.finish(), len });
        }
        if let Some(p) = &mut self.periodic {
            // Only the headers are read; a malformed batch stops the scan
            // where the record iterator would.
            let _ = sluice_guest::batch::scan_headers(&batch.bytes, |_, ts| {
                if let Some(t) = ts {
                    p.on_timestamp(t);
                }
            });
        }
        out.emit(batch)?;
        self.on_processing_time(self.clock.now_ms(), out)
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut dyn Emit) -> Result<(), TaskError> {
        if watermark == i64::MAX {
            self.forward(watermark, out)
        } else {
            Ok(())
        }
    }

    fn on_processing_time(&mut self, now: i64, out: &mut dyn Emit) -> Result<(), TaskError> {
        if let Some(wm) = self.periodic.as_mut().and_then(|p| p.poll(now)) {
            self.forward(wm, out)?;
        }
        Ok(())
    }
}
