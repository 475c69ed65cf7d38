//! The input gates of a batch job's tasks: the spill files of their
//! channels, read in order ([`BlockingGate`]) or sorted by key
//! ([`SortedGate`]).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use sluice_guest::batch::BatchWriter;

use super::sort::{ExternalSorter, SortedRecord, SortedStream};
use super::spill::SpillReader;
use crate::operator::TaskError;
use crate::runtime::{ChannelClosed, GateEvent, InputGate, RecordBatch, StreamElement};

/// Most records in a batch of one key's records before it is cut (the
/// key's group then goes on in the next batch).
const MAX_GROUP_BATCH: usize = 16;
/// Most bytes of a batch before it is cut.
const MAX_BATCH_BYTES: usize = 16 << 20;

/// One input channel of a task: its index in the task's inputs, the input
/// of the head it feeds, and its spill file.
#[derive(Debug, Clone)]
pub(crate) struct ChannelFile {
    pub input: u8,
    pub path: PathBuf,
}

/// Reads the files of a task's channels one after the other.
pub(crate) struct BlockingGate {
    channels: Vec<ChannelFile>,
    current: usize,
    reader: Option<SpillReader>,
    failure: Option<TaskError>,
}

impl BlockingGate {
    pub fn new(channels: Vec<ChannelFile>) -> Self {
        BlockingGate {
            channels,
            current: 0,
            reader: None,
            failure: None,
        }
    }

    fn fail(&mut self, message: String) -> ChannelClosed {
        self.failure = Some(TaskError::Exchange(message));
        ChannelClosed
    }
}

impl InputGate for BlockingGate {
    fn next(&mut self, _timeout: Duration) -> Result<GateEvent, ChannelClosed> {
        let Some(ch) = self.channels.get(self.current) else {
            return Ok(GateEvent::Ended);
        };
        if self.reader.is_none() {
            let r = SpillReader::open(&ch.path).map_err(|e| self.fail(e))?;
            self.reader = Some(r);
        }
        let Some(reader) = self.reader.as_mut() else {
            return Ok(GateEvent::Timeout);
        };
        match reader.next_batch() {
            Ok(Some(b)) => Ok(GateEvent::Element(self.current, StreamElement::Records(b))),
            Ok(None) => {
                self.reader = None;
                self.current += 1;
                Ok(GateEvent::Element(self.current - 1, StreamElement::EndOfData))
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    fn set_blocked(&mut self, _channel: usize, _blocked: bool) {}

    fn take_failure(&mut self) -> Option<TaskError> {
        self.failure.take()
    }
}

/// Reads every file of a keyed task's channels through an external sort
/// and hands out batches grouped by key, with [`StreamElement::KeysEnded`]
/// after a batch that ends with a key's last record.
pub(crate) struct SortedGate {
    channels: Vec<ChannelFile>,
    budget: usize,
    dir: PathBuf,
    batch_size: usize,
    task: String,
    stream: Option<SortedStream>,
    /// The next record, read ahead.
    next: SortedRecord,
    has_next: bool,
    last_key: Vec<u8>,
    last_hash: u64,
    pending: VecDeque<GateEvent>,
    done: bool,
    failure: Option<TaskError>,
}

impl SortedGate {
    pub fn new(channels: Vec<ChannelFile>, budget: usize, dir: PathBuf, batch_size: usize, task: String) -> Self {
        SortedGate {
            channels,
            budget,
            dir,
            batch_size: batch_size.max(1),
            task,
            stream: None,
            next: SortedRecord::default(),
            has_next: false,
            last_key: Vec::new(),
            last_hash: 0,
            pending: VecDeque::new(),
            done: false,
            failure: None,
        }
    }

    fn fail(&mut self, message: String) -> ChannelClosed {
        self.failure = Some(TaskError::Exchange(message));
        ChannelClosed
    }

    /// Read and sort every channel (the first call only).
    fn sort(&mut self) -> Result<(), String> {
        let started = std::time::Instant::now();
        // A task run again starts its sort over.
        let _ = std::fs::remove_dir_all(&self.dir);
        let mut sorter = ExternalSorter::new(self.budget, &self.dir);
        for ch in &self.channels {
            let mut r = SpillReader::open(&ch.path)?;
            while let Some(b) = r.next_batch()? {
                for rec in b.records() {
                    sorter.push(ch.input, &rec)?;
                }
            }
        }
        let (mut stream, stats) = sorter.finish()?;
        tracing::info!(
            task = %self.task,
            records = stats.records,
            runs = stats.runs,
            spilled_mb = stats.spilled_bytes / (1 << 20),
            ms = started.elapsed().as_millis() as u64,
            "sorted the task's input by key{}",
            if stats.runs > 0 { " (spilled past its memory budget)" } else { "" }
        );
        self.has_next = stream.next_into(&mut self.next)?;
        self.stream = Some(stream);
        Ok(())
    }

    /// The channel index to report records of `input` under.
    fn channel_of(&self, input: u8) -> usize {
        self.channels.iter().position(|c| c.input == input).unwrap_or(0)
    }

    fn advance(&mut self) -> Result<(), String> {
        match self.stream.as_mut() {
            Some(s) => self.has_next = s.next_into(&mut self.next)?,
            None => self.has_next = false,
        }
        Ok(())
    }

    /// The next batch: records of one input, ending at a key's end once it
    /// holds `batch_size` records (or cut in a long group).
    fn batch(&mut self) -> Result<(), String> {
        let input = self.next.input;
        let mut w = BatchWriter::with_capacity(self.batch_size * 32);
        loop {
            w.push_ref(&self.next.as_ref());
            self.last_key.clear();
            self.last_key.extend_from_slice(&self.next.key);
            self.last_hash = self.next.hash;
            self.advance()?;
            let n = w.len();
            let key_ends = !self.has_next || self.next.hash != self.last_hash || self.next.key != self.last_key;
            let cut = !self.has_next
                || self.next.input != input
                || (key_ends && n >= self.batch_size)
                || n >= self.batch_size * MAX_GROUP_BATCH
                || w.byte_len() >= MAX_BATCH_BYTES;
            if cut {
                let len = w.len();
                let channel = self.channel_of(input);
                self.pending.push_back(GateEvent::Element(
                    channel,
                    StreamElement::Records(RecordBatch { bytes: w.finish(), len }),
                ));
                if key_ends {
                    self.pending.push_back(GateEvent::Element(channel, StreamElement::KeysEnded));
                }
                return Ok(());
            }
        }
    }
}

impl InputGate for SortedGate {
    fn next(&mut self, _timeout: Duration) -> Result<GateEvent, ChannelClosed> {
        if let Some(e) = self.pending.pop_front() {
            return Ok(e);
        }
        if self.done {
            return Ok(GateEvent::Ended);
        }
        if self.stream.is_none() {
            self.sort().map_err(|e| self.fail(e))?;
        }
        if !self.has_next {
            self.done = true;
            self.stream = None;
            let _ = std::fs::remove_dir_all(&self.dir);
            for i in 0..self.channels.len() {
                self.pending.push_back(GateEvent::Element(i, StreamElement::EndOfData));
            }
            return Ok(self.pending.pop_front().unwrap_or(GateEvent::Ended));
        }
        self.batch().map_err(|e| self.fail(e))?;
        Ok(self.pending.pop_front().unwrap_or(GateEvent::Timeout))
    }

    fn set_blocked(&mut self, _channel: usize, _blocked: bool) {}

    fn take_failure(&mut self) -> Option<TaskError> {
        self.failure.take()
    }
}
