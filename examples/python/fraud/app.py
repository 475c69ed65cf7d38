"""`fraud` in Python: the `FraudDetector` of Flink's "Fraud Detection with the
DataStream API" tutorial, with event-time timers (as `udfs/fraud` in Rust).

Keyed by account. A small transaction (amount < 1.00) followed, within one
minute of event time, by a large one (amount > 500.00) of the same account
emits `{"account": a, "ts": ts, "amount": amount}` (the large transaction's).
"""

import sluice

SMALL_AMOUNT = 1.00
LARGE_AMOUNT = 500.00
ONE_MINUTE = 60 * 1000


class FraudDetector(sluice.KeyedProcess):
    def __init__(self, config):
        super().__init__(config)
        self.flag = sluice.ValueState("flag")
        self.timer = sluice.ValueState("timer")

    def process(self, record, out):
        tx = record.value_json()
        if self.flag.get() is not None:
            if tx["amount"] > LARGE_AMOUNT:
                alert = {"account": tx["account"], "ts": tx["ts"], "amount": tx["amount"]}
                out.emit_json(record.key, alert, tx["ts"])
            self.clean_up()
        if tx["amount"] < SMALL_AMOUNT:
            self.flag.set(True)
            timer = tx["ts"] + ONE_MINUTE
            sluice.register_event_time_timer(timer)
            self.timer.set(timer)

    def on_timer(self, timestamp, domain, key, out):
        # One minute has passed since the small transaction.
        self.timer.clear()
        self.flag.clear()

    def clean_up(self):
        timer = self.timer.get()
        if timer is not None:
            sluice.delete_event_time_timer(timer)
        self.timer.clear()
        self.flag.clear()


KeyedOperator = sluice.export_keyed_process(FraudDetector)
