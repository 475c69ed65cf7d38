//! Punctuated watermarks: a function that looks at every record and may emit
//! a watermark after it.

use std::marker::PhantomData;

use crate::Error;
use crate::export::{Record, for_each_record, open_operator, with_operator};

/// A punctuated watermark generator, as Flink's punctuated
/// `WatermarkGenerator`: records themselves say how far event time has
/// progressed.
///
/// ```ignore
/// use sluice_guest::{Punctuated, Record, Error};
/// struct EndOfBatch;
/// impl Punctuated for EndOfBatch {
///     fn open(_: &str) -> Result<Self, Error> { Ok(EndOfBatch) }
///     fn on_record(&mut self, r: &Record<'_>) -> Option<i64> {
///         if r.value == b"EOB" { r.timestamp } else { None }
///     }
/// }
/// sluice_guest::export_punctuated!(EndOfBatch);
/// ```
pub trait Punctuated: Sized + 'static {
    /// Called once per instance with the operator's JSON configuration.
    fn open(config: &str) -> Result<Self, Error>;
    /// Called once per record, in order: `Some(w)` emits the watermark `w`
    /// (ms; no record at or before `w` is expected any more) after it.
    fn on_record(&mut self, record: &Record<'_>) -> Option<i64>;
}

/// Export glue for [`Punctuated`].
pub struct PunctuatedExport<T>(PhantomData<T>);

use crate::__private::punctuated::exports::sluice::udf::watermark_generator as wm_op;

impl<T: Punctuated> wm_op::Guest for PunctuatedExport<T> {
    fn open(config: String) -> Result<(), String> {
        open_operator(|| T::open(&config))
    }

    fn on_batch(records: Vec<u8>) -> Vec<wm_op::Punctuation> {
        with_operator::<T, _>(|op| {
            let mut punctuations = Vec::new();
            for_each_record(&records, |r| {
                if let Some(watermark) = op.on_record(&r) {
                    punctuations.push(wm_op::Punctuation { after: r.index, watermark });
                }
            });
            punctuations
        })
    }
}
