//! `fraud`: the `FraudDetector` of Flink's "Fraud Detection with the
//! DataStream API" tutorial, with event-time timers.
//!
//! Keyed by account. A small transaction (amount < 1.00) followed, within
//! one minute of event time, by a large one (amount > 500.00) of the same
//! account raises an alert `{"account": a, "ts": ts, "amount": amount}`
//! (the large transaction's), keyed by the account at the transaction's
//! event time. Per account the host keeps two value states: `flag` (the last
//! transaction was small) and `timer` (the event-time timer that clears the
//! flag one minute after the small transaction).
//!
//! The same operator is written in Python (`examples/python/fraud`) and
//! JavaScript (`examples/js/fraud`); `examples/fraud.toml` runs it.

use sluice_guest::{Collector, Error, KeyedProcess, Record, Timer, ValueState, timers};

const SMALL_AMOUNT: f64 = 1.00;
const LARGE_AMOUNT: f64 = 500.00;
const ONE_MINUTE: i64 = 60 * 1000;

#[derive(serde::Deserialize)]
struct Transaction {
    account: String,
    amount: f64,
    ts: i64,
}

#[derive(serde::Serialize)]
struct Alert<'a> {
    account: &'a str,
    ts: i64,
    amount: f64,
}

struct FraudDetector {
    flag: ValueState<bool>,
    timer: ValueState<i64>,
}

impl FraudDetector {
    /// Delete the pending timer and clear the state.
    fn clean_up(&self) -> Result<(), Error> {
        if let Some(timer) = self.timer.get()? {
            timers::delete_event_time_timer(timer)?;
        }
        self.timer.clear()?;
        self.flag.clear()
    }
}

impl KeyedProcess for FraudDetector {
    fn open(_config: &str) -> Result<Self, Error> {
        Ok(FraudDetector {
            flag: ValueState::new("flag")?,
            timer: ValueState::new("timer")?,
        })
    }

    fn process(&mut self, record: Record<'_>, out: &mut Collector) -> Result<(), Error> {
        let tx: Transaction = serde_json::from_slice(record.value)?;
        if self.flag.get()?.is_some() {
            if tx.amount > LARGE_AMOUNT {
                let alert = Alert {
                    account: &tx.account,
                    ts: tx.ts,
                    amount: tx.amount,
                };
                out.emit_json(Some(tx.account.as_bytes()), &alert, Some(tx.ts))?;
            }
            self.clean_up()?;
        }
        if tx.amount < SMALL_AMOUNT {
            self.flag.set(true)?;
            let timer = tx.ts + ONE_MINUTE;
            timers::register_event_time_timer(timer)?;
            self.timer.set(timer)?;
        }
        Ok(())
    }

    fn on_timer(&mut self, _key: &[u8], _timer: Timer, _out: &mut Collector) -> Result<(), Error> {
        // One minute has passed since the small transaction.
        self.timer.clear()?;
        self.flag.clear()
    }
}

sluice_guest::export_keyed_process!(FraudDetector);
