// Sluice keyed operators in JavaScript: the export glue of the
// `keyed-process` world, typed keyed state (`ValueState`, `ListState`,
// `MapState`) over the host's `state` interface, and timers
// (`registerEventTimeTimer` and the like) over its `timers` interface.
// Values are stored as JSON, as the Rust and Python SDKs store them, so UDFs
// in different languages can read each other's state.
//
//     import { KeyedProcess, ValueState, exportKeyedProcess } from './sluice-keyed.js';
//
//     class Count extends KeyedProcess {
//       constructor(config) { super(config); this.count = new ValueState('count'); }
//       process(record, out) { ... }
//     }
//
//     export const keyedOperator = exportKeyedProcess(Count);
//
// Timers belong to the key in scope when registered and live in host state:
//
//     process(record, out) { registerEventTimeTimer(record.timestamp + 60000); }
//     onTimer(timestamp, domain, key, out) { ... }   // once the watermark reaches it

import { enterRun } from 'sluice:udf/keyed-context@0.1.0';
import * as state from 'sluice:udf/state@0.1.0';
import * as timers from 'sluice:udf/timers@0.1.0';
import { Collector, RecordFailed, Udf, decode, openUdf, runRecords } from './sluice.js';

export * from './sluice.js';

const utf8 = new TextEncoder();
const text = new TextDecoder();
const EMPTY = new Uint8Array(0);

/** Records grouped by key, with that key's state in scope: implement
 * `process(record, out, input)`, and `onTimer(timestamp, domain, key, out)`
 * when the UDF registers timers (`domain` is 'event-time' or 'processing-time'). */
export class KeyedProcess extends Udf {
  onTimer(_timestamp, _domain, _key, _out) {}
}

/** The host refused a timer call (for example: no key is in scope, outside
 * `process` and `onTimer`). Not caught by the glue, it traps, as any bug. */
/** The host refused a timer call. A `RecordFailed`: uncaught, it fails the record (the job's
 * `on_record_error` decides), as `?` on the Rust SDK's timer calls does. */
export class TimerError extends RecordFailed {}

function timerCall(verb, domain, timestamp) {
  try {
    timers[verb](domain, BigInt(timestamp));
  } catch (e) {
    const why = e && e.payload !== undefined ? e.payload : e && e.message ? e.message : e;
    throw new TimerError(`cannot ${verb} the ${domain} timer at ${timestamp}: ${why}`);
  }
}

/** Register an event-time timer at `timestamp` (ms) for the key in scope:
 * `onTimer` is called once the watermark reaches it. A key has at most one
 * timer per domain and timestamp: registering it again is a no-op. Throws
 * `TimerError` when no key is in scope. */
export function registerEventTimeTimer(timestamp) {
  timerCall('register', 'event-time', timestamp);
}

/** Register a processing-time timer at `timestamp` (ms) for the key in scope:
 * `onTimer` is called once the host's clock reaches it. */
export function registerProcessingTimeTimer(timestamp) {
  timerCall('register', 'processing-time', timestamp);
}

/** Delete the event-time timer at `timestamp` of the key in scope; deleting a
 * timer that does not exist is not an error. */
export function deleteEventTimeTimer(timestamp) {
  timerCall('delete', 'event-time', timestamp);
}

/** Delete the processing-time timer at `timestamp` of the key in scope, if any. */
export function deleteProcessingTimeTimer(timestamp) {
  timerCall('delete', 'processing-time', timestamp);
}

function sameBytes(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** The `keyed-operator` export of a `KeyedProcess` class:
 * `export const keyedOperator = exportKeyedProcess(C)`. */
export function exportKeyedProcess(cls) {
  let udf = null;
  return {
    open(config) {
      udf = openUdf(cls, config);
    },
    processRuns(input, batch) {
      let run = -1;
      let current = null;
      return runRecords(decode(batch), (r, out) => {
        if (current === null || !sameBytes(current, r.key)) {
          run += 1;
          current = r.key;
          enterRun(run);
        }
        udf.process(r, out, input);
      });
    },
    onTimers(timers) {
      const out = new Collector();
      for (const t of timers) {
        const key = enterRun(t.run);
        udf.onTimer(Number(t.timestamp), t.domain, key, out);
      }
      return { records: out.take(), errors: [] };
    },
  };
}

function encode(value) {
  return utf8.encode(JSON.stringify(value));
}

function parse(bytes) {
  return JSON.parse(text.decode(bytes));
}

function scan(id, prefix, each) {
  let after;
  for (;;) {
    const page = state.list(id, prefix, after, 1024);
    for (const e of page.entries) each(e.userKey, e.value);
    if (page.next === undefined || page.next === null) return;
    after = page.next;
  }
}

/** One value per key. */
export class ValueState {
  constructor(name) {
    this.id = state.declare(name);
  }

  /** The key's value, or `missing`. */
  get(missing = null) {
    const v = state.get(this.id, EMPTY);
    return v === undefined || v === null ? missing : parse(v);
  }

  /** Replace the key's value. */
  set(value) {
    state.put(this.id, EMPTY, encode(value));
  }

  /** Remove the key's value. */
  clear() {
    state.delete(this.id, EMPTY);
  }
}

/** A map per key (string keys, JSON values). */
export class MapState {
  constructor(name) {
    this.id = state.declare(name);
  }

  get(key, missing = null) {
    const v = state.get(this.id, utf8.encode(key));
    return v === undefined || v === null ? missing : parse(v);
  }

  put(key, value) {
    state.put(this.id, utf8.encode(key), encode(value));
  }

  remove(key) {
    state.delete(this.id, utf8.encode(key));
  }

  /** All entries, in key order, as `[key, value]`, fetched page by page. */
  entries() {
    const out = [];
    scan(this.id, EMPTY, (k, v) => out.push([text.decode(k), parse(v)]));
    return out;
  }

  clear() {
    state.clear(this.id);
  }
}

const ELEMENT = 1;

/** An append-only list per key (one state entry per element, in order). */
export class ListState {
  constructor(name) {
    this.id = state.declare(name);
  }

  size() {
    const v = state.get(this.id, EMPTY);
    return v === undefined || v === null ? 0 : parse(v);
  }

  add(value) {
    const n = this.size();
    const k = new Uint8Array(9);
    k[0] = ELEMENT;
    new DataView(k.buffer).setBigUint64(1, BigInt(n), false);
    state.put(this.id, k, encode(value));
    state.put(this.id, EMPTY, encode(n + 1));
  }

  get() {
    const out = [];
    scan(this.id, Uint8Array.of(ELEMENT), (_k, v) => out.push(parse(v)));
    return out;
  }

  clear() {
    state.clear(this.id);
  }
}
