//! `tokenize`: a flat-map from a line of text to one record per word.
//!
//! A word is a maximal run of alphanumeric characters, lowercased. Each word
//! becomes a record whose key and value are the word, with the line's
//! timestamp, so a downstream keyed operator can partition by word.

use sluice_guest::{Collector, Error, FlatMap, Record};

struct Tokenize {
    word: String,
}

impl FlatMap for Tokenize {
    fn open(_config: &str) -> Result<Self, Error> {
        Ok(Tokenize { word: String::new() })
    }

    fn flat_map(&mut self, record: Record<'_>, out: &mut Collector) -> Result<(), Error> {
        let line = record.value_str()?;
        for piece in line.split(|c: char| !c.is_alphanumeric()).filter(|p| !p.is_empty()) {
            self.word.clear();
            for c in piece.chars() {
                self.word.extend(c.to_lowercase());
            }
            out.emit(Some(self.word.as_bytes()), self.word.as_bytes(), record.timestamp);
        }
        Ok(())
    }
}

sluice_guest::export_flat_map!(Tokenize);
