// `tokenize` in JavaScript: a flat-map from a line of text to one record per
// word, keyed by the word. A word is a maximal run of letters and digits,
// lowercased: ASCII letters and digits, and the non-ASCII characters that
// have case (StarlingMonkey has no Unicode property tables, so `\p{L}` is not
// available; the Rust UDF also counts uncased scripts and non-ASCII digits).
// On ASCII text the words are the Rust UDF's.
import { FlatMap, exportFlatMap } from './sluice.js';

function isWordChar(c) {
  const code = c.charCodeAt(0);
  if (code < 0x80) {
    return (code >= 0x30 && code <= 0x39) || (code >= 0x41 && code <= 0x5a) || (code >= 0x61 && code <= 0x7a);
  }
  return c.toLowerCase() !== c.toUpperCase();
}

class Tokenize extends FlatMap {
  flatMap(record, out) {
    const line = record.valueStr();
    let start = -1;
    for (let i = 0; i <= line.length; i++) {
      if (i < line.length && isWordChar(line[i])) {
        if (start < 0) start = i;
      } else if (start >= 0) {
        const word = line.slice(start, i).toLowerCase();
        out.emit(word, word, record.timestamp);
        start = -1;
      }
    }
  }
}

export const statelessOperator = exportFlatMap(Tokenize);
