// `count` in JavaScript: the keyed word count, with a `ValueState` per word
// in host state; emits `{"word": w, "count": n}` on every update.
import { KeyedProcess, ValueState, exportKeyedProcess } from './sluice-keyed.js';

class Count extends KeyedProcess {
  constructor(config) {
    super(config);
    this.count = new ValueState('count');
  }

  process(record, out) {
    const n = this.count.get(0) + 1;
    this.count.set(n);
    out.emitJson(record.key, { word: record.keyStr(), count: n }, record.timestamp);
  }
}

export const keyedOperator = exportKeyedProcess(Count);
