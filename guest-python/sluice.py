"""Sluice UDFs in Python: records, typed keyed state, and the export glue.

A UDF is a class; a component exports it with one line:

    import sluice

    class Tokenize(sluice.FlatMap):
        def flat_map(self, record, out):
            for word in record.value_str().split():
                out.emit(word.encode(), word.encode(), record.timestamp)

    StatelessOperator = sluice.export_flat_map(Tokenize)

and is built with `componentize-py -d wit/sluice-udf@0.1.0 -w stateless
componentize app -p guest-python -p <dir of app.py> -o tokenize.wasm`
(`scripts/build-guests python` does it).

Records cross the boundary packed in batches (the `types.batch` format of
the WIT), so one call carries many records. Keyed state lives in the host
(`state` interface): `ValueState`, `ListState` and `MapState` read and write
it for the key in scope, so a checkpoint never depends on Python's memory.
Values are stored as JSON.

Timers are host-owned too: in a keyed process, `register_event_time_timer(ts)`
(or the processing-time and delete variants) while a key is in scope, and the
host calls `on_timer` with that key in scope when the watermark (or its clock)
reaches `ts`. `current_watermark()` and `current_processing_time()` read time
as the host sees it.
"""

import json
import struct

from componentize_py_types import Err
from wit_world.imports import context as _context
from wit_world.imports import log as _log
from wit_world.imports import types as _types

# Imported here, when the component is built (componentize-py snapshots the
# modules loaded then; a binding module first imported at run time may be
# missing). Only the keyed-process world has timers.
try:
    from wit_world.imports import timers as _timers
except ImportError:
    _timers = None

__all__ = [
    "Record", "Collector", "RecordFailed", "Map", "Filter", "FlatMap", "KeyedProcess",
    "ValueState", "ListState", "MapState", "export_map", "export_filter", "export_flat_map",
    "export_keyed_process", "info", "warn", "error", "TimerError", "register_event_time_timer",
    "register_processing_time_timer", "delete_event_time_timer", "delete_processing_time_timer",
    "current_watermark", "current_processing_time",
]

_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")


class Record:
    """One record: an optional key (bytes), an optional event time (ms) and a value (bytes)."""

    __slots__ = ("key", "timestamp", "value")

    def __init__(self, key, timestamp, value):
        self.key = key
        self.timestamp = timestamp
        self.value = value

    def value_str(self):
        """The value as UTF-8 text."""
        return self.value.decode("utf-8")

    def value_json(self):
        """The value parsed as JSON."""
        return json.loads(self.value)


def decode(batch):
    """The records of a packed batch."""
    records = []
    pos, end = 0, len(batch)
    mv = memoryview(batch)
    while pos < end:
        flags = batch[pos]
        pos += 1
        key = ts = None
        if flags & 1:
            (n,) = _U32.unpack_from(batch, pos)
            pos += 4
            key = bytes(mv[pos:pos + n])
            pos += n
        if flags & 2:
            (ts,) = _I64.unpack_from(batch, pos)
            pos += 8
        (n,) = _U32.unpack_from(batch, pos)
        pos += 4
        records.append(Record(key, ts, bytes(mv[pos:pos + n])))
        pos += n
    return records


class Collector:
    """Where a UDF emits records; they are packed into the call's output batch."""

    __slots__ = ("_buf",)

    def __init__(self):
        self._buf = bytearray()

    def emit(self, key, value, timestamp=None):
        """Emit a record: `key` bytes or None, `value` bytes or str, `timestamp` ms or None."""
        if isinstance(value, str):
            value = value.encode("utf-8")
        if isinstance(key, str):
            key = key.encode("utf-8")
        b = self._buf
        b.append((1 if key is not None else 0) | (2 if timestamp is not None else 0))
        if key is not None:
            b += _U32.pack(len(key))
            b += key
        if timestamp is not None:
            b += _I64.pack(timestamp)
        b += _U32.pack(len(value))
        b += value

    def emit_json(self, key, obj, timestamp=None):
        """Emit `obj` as compact JSON (the form Rust's serde_json writes)."""
        self.emit(key, json.dumps(obj, separators=(",", ":"), ensure_ascii=False), timestamp)

    def _take(self):
        out = bytes(self._buf)
        self._buf = bytearray()
        return out


class RecordFailed(Exception):
    """Raise from a UDF to report the current record as failed (a value, not a bug):
    the host skips it or fails the job, per the job's `on_record_error`."""


def _log_at(level, message):
    _log.log(level, str(message))


def info(message):
    """Log at info level (tagged and rate-limited by the host)."""
    _log_at(_log.Level.INFO, message)


def warn(message):
    """Log at warn level."""
    _log_at(_log.Level.WARN, message)


def error(message):
    """Log at error level (kept to explain a later trap)."""
    _log_at(_log.Level.ERROR, message)


class Map:
    """One record in, one out: implement `map(record) -> (key, value, timestamp)`."""

    def __init__(self, config):
        self.config = config


class Filter:
    """Keep a record when `keep(record)` is true."""

    def __init__(self, config):
        self.config = config


class FlatMap:
    """Any number of records per input: implement `flat_map(record, out)`."""

    def __init__(self, config):
        self.config = config


class KeyedProcess:
    """Records grouped by key, with that key's state in scope: implement
    `process(record, out)`, and `on_timer(timestamp, domain, key, out)` when
    the UDF registers timers (`register_event_time_timer` and the like);
    `domain` is the WIT `time-domain` (`.name` is `EVENT_TIME` or
    `PROCESSING_TIME`), `key` the timer's key (bytes), in scope."""

    def __init__(self, config):
        self.config = config

    def on_timer(self, timestamp, domain, key, out):
        pass


class TimerError(RecordFailed):
    """The host refused a timer call (for example: no key is in scope, outside
    `process` and `on_timer`, or the timer limit). A `RecordFailed`: uncaught,
    it fails the record (the job's `on_record_error` decides), as `?` on the
    Rust SDK's timer calls does."""


def _timer_call(verb, domain, timestamp):
    t = _timers
    if t is None:
        raise TimerError(f"cannot {verb} the {domain} timer at {timestamp}: only a keyed process has timers")
    d = t.TimeDomain.EVENT_TIME if domain == "event-time" else t.TimeDomain.PROCESSING_TIME
    try:
        (t.register if verb == "register" else t.delete)(d, int(timestamp))
    except Err as e:
        raise TimerError(f"cannot {verb} the {domain} timer at {timestamp}: {e.value}") from None


def register_event_time_timer(timestamp):
    """Register an event-time timer at `timestamp` (ms) for the key in scope: `on_timer`
    is called once the watermark reaches it. A key has at most one timer per domain and
    timestamp: registering it again is a no-op. Raises `TimerError` when no key is in scope."""
    _timer_call("register", "event-time", timestamp)


def register_processing_time_timer(timestamp):
    """Register a processing-time timer at `timestamp` (ms) for the key in scope: `on_timer`
    is called once the host's clock reaches it."""
    _timer_call("register", "processing-time", timestamp)


def delete_event_time_timer(timestamp):
    """Delete the event-time timer at `timestamp` of the key in scope; deleting a timer that
    does not exist is not an error."""
    _timer_call("delete", "event-time", timestamp)


def delete_processing_time_timer(timestamp):
    """Delete the processing-time timer at `timestamp` of the key in scope, if any."""
    _timer_call("delete", "processing-time", timestamp)


def current_watermark():
    """The subtask's current event-time watermark (ms), or None before the first one."""
    return _context.watermark()


def current_processing_time():
    """The host's processing time (ms since the Unix epoch); a guest has no clock of its own."""
    return _context.processing_time()


def _run_records(records, each):
    """Call `each(index, record, out)`; failures become record errors."""
    out = Collector()
    errors = []
    for i, r in enumerate(records):
        try:
            each(r, out)
        except RecordFailed as e:
            errors.append(_types.RecordError(index=i, message=str(e)))
    return _types.Output(records=out._take(), errors=errors)


def _open(cls, config):
    try:
        return cls(json.loads(config) if config else {})
    except Exception as e:  # an error here fails the job before it starts
        raise Err(str(e))


def _stateless(cls, each):
    class StatelessOperator:
        udf = None

        def open(self, config):
            StatelessOperator.udf = _open(cls, config)

        def process(self, records):
            udf = StatelessOperator.udf
            return _run_records(decode(records), lambda r, out: each(udf, r, out))

    return StatelessOperator


def export_map(cls):
    """The `stateless-operator` export of a `Map` class: assign it to `StatelessOperator`."""

    def each(udf, r, out):
        key, value, ts = udf.map(r)
        out.emit(key, value, ts)

    return _stateless(cls, each)


def export_filter(cls):
    """The `stateless-operator` export of a `Filter` class."""

    def each(udf, r, out):
        if udf.keep(r):
            out.emit(r.key, r.value, r.timestamp)

    return _stateless(cls, each)


def export_flat_map(cls):
    """The `stateless-operator` export of a `FlatMap` class."""
    return _stateless(cls, lambda udf, r, out: udf.flat_map(r, out))


def export_keyed_process(cls):
    """The `keyed-operator` export of a `KeyedProcess` class: assign it to `KeyedOperator`."""
    try:
        from wit_world.imports import keyed_context
    except ImportError:
        raise ImportError(
            "export_keyed_process needs the keyed-process world, but this component is being built "
            "for another one: build it with `componentize-py ... -w keyed-process` (a map, filter or "
            "flat-map is built with -w stateless)"
        ) from None

    class KeyedOperator:
        udf = None

        def open(self, config):
            KeyedOperator.udf = _open(cls, config)

        def process_runs(self, input, records):
            udf = KeyedOperator.udf
            run = -1
            current = object()

            def each(r, out):
                nonlocal run, current
                if r.key != current:
                    run += 1
                    current = r.key
                    keyed_context.enter_run(run)
                udf.process(r, out)

            return _run_records(decode(records), each)

        def on_timers(self, timers):
            udf = KeyedOperator.udf
            out = Collector()
            for t in timers:
                key = keyed_context.enter_run(t.run)
                udf.on_timer(t.timestamp, t.domain, key, out)
            return _types.Output(records=out._take(), errors=[])

    return KeyedOperator


def _state():
    from wit_world.imports import state
    return state


class ValueState:
    """One value per key, stored as JSON in host state."""

    def __init__(self, name):
        self._state = _state()
        self._id = self._state.declare(name)

    def get(self, default=None):
        """The key's value, or `default`."""
        v = self._state.get(self._id, b"")
        return default if v is None else json.loads(v)

    def set(self, value):
        """Replace the key's value."""
        self._state.put(self._id, b"", json.dumps(value, separators=(",", ":")).encode())

    def clear(self):
        """Remove the key's value."""
        self._state.delete(self._id, b"")


class MapState:
    """A map per key (string keys, JSON values), in host state."""

    def __init__(self, name):
        self._state = _state()
        self._id = self._state.declare(name)

    def get(self, key, default=None):
        v = self._state.get(self._id, key.encode())
        return default if v is None else json.loads(v)

    def put(self, key, value):
        self._state.put(self._id, key.encode(), json.dumps(value, separators=(",", ":")).encode())

    def remove(self, key):
        self._state.delete(self._id, key.encode())

    def items(self):
        """All entries in key order, fetched page by page."""
        after = None
        while True:
            page = self._state.list(self._id, b"", after, 1024)
            for e in page.entries:
                yield e.user_key.decode(), json.loads(e.value)
            if page.next is None:
                return
            after = page.next

    def clear(self):
        self._state.clear(self._id)


class ListState:
    """An append-only list per key, in host state (one entry per element)."""

    def __init__(self, name):
        self._state = _state()
        self._id = self._state.declare(name)
        self._len = MapState.__new__(MapState)

    def _count(self):
        v = self._state.get(self._id, b"")
        return 0 if v is None else int(v)

    def add(self, value):
        n = self._count()
        self._state.put(self._id, b"\x01" + n.to_bytes(8, "big"), json.dumps(value, separators=(",", ":")).encode())
        self._state.put(self._id, b"", str(n + 1).encode())

    def get(self):
        out, after = [], None
        while True:
            page = self._state.list(self._id, b"\x01", after, 1024)
            out.extend(json.loads(e.value) for e in page.entries)
            if page.next is None:
                return out
            after = page.next

    def clear(self):
        self._state.clear(self._id)
