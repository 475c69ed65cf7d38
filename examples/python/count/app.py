"""`count` in Python: the keyed word count, with a `ValueState` per word in
host state; emits `{"word": w, "count": n}` on every update."""

import sluice


class Count(sluice.KeyedProcess):
    def __init__(self, config):
        super().__init__(config)
        self.count = sluice.ValueState("count")

    def process(self, record, out):
        n = self.count.get(0) + 1
        self.count.set(n)
        out.emit_json(record.key, {"word": record.key.decode(), "count": n}, record.timestamp)


KeyedOperator = sluice.export_keyed_process(Count)
