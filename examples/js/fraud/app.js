// `fraud` in JavaScript: the `FraudDetector` of Flink's "Fraud Detection with
// the DataStream API" tutorial, with event-time timers (as `udfs/fraud` in Rust).
//
// Keyed by account. A small transaction (amount < 1.00) followed, within one
// minute of event time, by a large one (amount > 500.00) of the same account
// emits `{"account": a, "ts": ts, "amount": amount}` (the large transaction's).
import {
  KeyedProcess,
  ValueState,
  deleteEventTimeTimer,
  exportKeyedProcess,
  registerEventTimeTimer,
} from './sluice-keyed.js';

const SMALL_AMOUNT = 1.0;
const LARGE_AMOUNT = 500.0;
const ONE_MINUTE = 60 * 1000;

class FraudDetector extends KeyedProcess {
  constructor(config) {
    super(config);
    this.flag = new ValueState('flag');
    this.timer = new ValueState('timer');
  }

  process(record, out) {
    const tx = record.valueJson();
    if (this.flag.get() !== null) {
      if (tx.amount > LARGE_AMOUNT) {
        out.emitJson(record.key, { account: tx.account, ts: tx.ts, amount: tx.amount }, tx.ts);
      }
      this.cleanUp();
    }
    if (tx.amount < SMALL_AMOUNT) {
      this.flag.set(true);
      const timer = tx.ts + ONE_MINUTE;
      registerEventTimeTimer(timer);
      this.timer.set(timer);
    }
  }

  onTimer(_timestamp, _domain, _key, _out) {
    // One minute has passed since the small transaction.
    this.timer.clear();
    this.flag.clear();
  }

  cleanUp() {
    const timer = this.timer.get();
    if (timer !== null) deleteEventTimeTimer(timer);
    this.timer.clear();
    this.flag.clear();
  }
}

export const keyedOperator = exportKeyedProcess(FraudDetector);
