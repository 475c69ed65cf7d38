// Sluice UDFs in JavaScript: records, output, logging and the export glue of
// stateless operators. Keyed operators and state are in `sluice-keyed.js`.
//
// A UDF is a class; a component exports it with one line:
//
//     import { FlatMap, exportFlatMap } from './sluice.js';
//
//     class Tokenize extends FlatMap {
//       flatMap(record, out) {
//         for (const w of record.valueStr().split(/\s+/)) if (w) out.emit(w, w, record.timestamp);
//       }
//     }
//
//     export const statelessOperator = exportFlatMap(Tokenize);
//
// and is built with componentize-js (`scripts/build-guests js` does it),
// against the world `stateless` of wit/sluice-udf@0.1.0.
//
// Records cross the boundary packed in batches (the `types.batch` format of
// the WIT): one call carries many records. Keys and values are Uint8Arrays;
// timestamps are numbers (ms since the Unix epoch) or null.
//
// `currentWatermark()` and `currentProcessingTime()` read time as the host
// sees it; timers are in `sluice-keyed.js`.

import { processingTime, watermark } from 'sluice:udf/context@0.1.0';
import { log } from 'sluice:udf/log@0.1.0';

const utf8 = new TextEncoder();
const text = new TextDecoder();

/** One record: an optional key, an optional event time (ms) and a value. */
export class Record {
  constructor(key, timestamp, value) {
    /** @type {Uint8Array | null} */
    this.key = key;
    /** @type {number | null} */
    this.timestamp = timestamp;
    /** @type {Uint8Array} */
    this.value = value;
  }

  /** The key as UTF-8 text (null when there is none). */
  keyStr() {
    return this.key === null ? null : text.decode(this.key);
  }

  /** The value as UTF-8 text. */
  valueStr() {
    return text.decode(this.value);
  }

  /** The value parsed as JSON. */
  valueJson() {
    return JSON.parse(this.valueStr());
  }
}

/** The records of a packed batch (a Uint8Array). Keys and values are views into it. */
export function decode(batch) {
  const view = new DataView(batch.buffer, batch.byteOffset, batch.byteLength);
  const records = [];
  let pos = 0;
  const end = batch.byteLength;
  while (pos < end) {
    const flags = batch[pos++];
    let key = null;
    let ts = null;
    if (flags & 1) {
      const n = view.getUint32(pos, true);
      pos += 4;
      key = batch.subarray(pos, pos + n);
      pos += n;
    }
    if (flags & 2) {
      ts = Number(view.getBigInt64(pos, true));
      pos += 8;
    }
    const n = view.getUint32(pos, true);
    pos += 4;
    if (pos + n > end) throw new Error('malformed batch');
    records.push(new Record(key, ts, batch.subarray(pos, pos + n)));
    pos += n;
  }
  return records;
}

function bytes(v) {
  return typeof v === 'string' ? utf8.encode(v) : v;
}

/** Where a UDF emits records; they are packed into the call's output batch. */
export class Collector {
  constructor() {
    this.buf = new Uint8Array(1024);
    this.view = new DataView(this.buf.buffer);
    this.len = 0;
  }

  reserve(more) {
    if (this.buf.length - this.len >= more) return;
    let cap = this.buf.length * 2;
    while (cap - this.len < more) cap *= 2;
    const buf = new Uint8Array(cap);
    buf.set(this.buf.subarray(0, this.len));
    this.buf = buf;
    this.view = new DataView(buf.buffer);
  }

  /** Emit a record: `key` (string, Uint8Array or null), `value` (string or
   * Uint8Array), `timestamp` (ms, or null). */
  emit(key, value, timestamp = null) {
    const k = key === null || key === undefined ? null : bytes(key);
    const v = bytes(value);
    this.reserve(17 + (k ? k.length : 0) + v.length);
    const hasTs = timestamp !== null && timestamp !== undefined;
    this.buf[this.len++] = (k ? 1 : 0) | (hasTs ? 2 : 0);
    if (k) {
      this.view.setUint32(this.len, k.length, true);
      this.buf.set(k, this.len + 4);
      this.len += 4 + k.length;
    }
    if (hasTs) {
      this.view.setBigInt64(this.len, BigInt(timestamp), true);
      this.len += 8;
    }
    this.view.setUint32(this.len, v.length, true);
    this.buf.set(v, this.len + 4);
    this.len += 4 + v.length;
  }

  /** Emit `obj` as compact JSON (the form Rust's serde_json writes). */
  emitJson(key, obj, timestamp = null) {
    this.emit(key, JSON.stringify(obj), timestamp);
  }

  take() {
    const out = this.buf.slice(0, this.len);
    this.len = 0;
    return out;
  }
}

/** Throw from a UDF to report the current record as failed (a value, not a
 * bug): the host skips it or fails the job, per the job's `on_record_error`. */
export class RecordFailed extends Error {}

/** Log at info level (tagged and rate-limited by the host). */
export function info(message) {
  log('info', String(message));
}

/** Log at warn level. */
export function warn(message) {
  log('warn', String(message));
}

/** Log at error level (kept to explain a later trap). */
export function error(message) {
  log('error', String(message));
}

/** The subtask's current event-time watermark (ms), or null before the first one. */
export function currentWatermark() {
  const w = watermark();
  return w === undefined || w === null ? null : Number(w);
}

/** The host's processing time (ms since the Unix epoch); a guest has no clock of its own. */
export function currentProcessingTime() {
  return Number(processingTime());
}

/** Base of every UDF class: `this.config` is the operator's configuration. */
export class Udf {
  constructor(config) {
    this.config = config;
  }
}

/** One record in, one out: implement `map(record)` returning `[key, value, timestamp]`. */
export class Map extends Udf {}

/** Keep a record when `keep(record)` returns true. */
export class Filter extends Udf {}

/** Any number of records per input: implement `flatMap(record, out)`. */
export class FlatMap extends Udf {}

/** Call `each(record, out)` for every record of a batch; `RecordFailed`
 * becomes a record error, anything else a trap. Returns the WIT `output`. */
export function runRecords(records, each) {
  const out = new Collector();
  const errors = [];
  for (let i = 0; i < records.length; i++) {
    try {
      each(records[i], out);
    } catch (e) {
      if (!(e instanceof RecordFailed)) throw e;
      errors.push({ index: i, message: e.message });
    }
  }
  return { records: out.take(), errors };
}

/** Construct the UDF from the configuration (JSON); a failure fails the job
 * before it starts (the string thrown is the `open` error). */
export function openUdf(cls, config) {
  try {
    return new cls(config ? JSON.parse(config) : {});
  } catch (e) {
    throw String(e && e.message ? e.message : e);
  }
}

function stateless(cls, each) {
  let udf = null;
  return {
    open(config) {
      udf = openUdf(cls, config);
    },
    process(batch) {
      return runRecords(decode(batch), (r, out) => each(udf, r, out));
    },
  };
}

/** The `stateless-operator` export of a `Map` class: `export const statelessOperator = exportMap(C)`. */
export function exportMap(cls) {
  return stateless(cls, (udf, r, out) => {
    const [key, value, ts] = udf.map(r);
    out.emit(key, value, ts);
  });
}

/** The `stateless-operator` export of a `Filter` class. */
export function exportFilter(cls) {
  return stateless(cls, (udf, r, out) => {
    if (udf.keep(r)) out.emit(r.key, r.value, r.timestamp);
  });
}

/** The `stateless-operator` export of a `FlatMap` class. */
export function exportFlatMap(cls) {
  return stateless(cls, (udf, r, out) => udf.flatMap(r, out));
}
