//! The Nexmark queries: each as a Sluice job (Rust UDF components from
//! `udfs/nexmark/`) and as a reference implementation in plain Rust over the
//! same events (the `nexmark` crate's generator, without Sluice), which the
//! tests compare with the jobs' output and `sluice bench nexmark` measures
//! them against.
//!
//! Every output row is a JSON object; the reference writes the same fields
//! with serde_json, as the UDFs do.

use foldhash::{HashMap, HashMapExt};
use std::path::Path;

use nexmark::event::Event;
use serde::Serialize;

use crate::connectors::NexmarkSettings;

/// The queries Sluice runs.
pub const QUERIES: &[&str] = &["q0", "q1", "q2", "q3", "q4", "q5", "q7", "q8"];

/// The job spec (TOML) of `query` over `events` events at `parallelism`,
/// reading components from `udfs` and writing to `sink` (a `[[sinks]]`
/// table body without the name, e.g. `kind = "discard"`).
pub fn job_toml(query: &str, events: u64, parallelism: u32, udfs: &Path, sink: &str) -> anyhow::Result<String> {
    let mut job = JobToml {
        toml: format!(
            r#"name = "nexmark-{query}"
[[sources]]
name = "events"
kind = "nexmark"
count = {events}
parallelism = {parallelism}
watermarks = {{ strategy = "bounded", max_out_of_orderness_ms = 4000 }}
"#
        ),
        parallelism,
        udfs,
    };
    // Each operator: name, kind, component (udfs/nexmark/<c>, or json-key),
    // and its other settings; then the edges, with the input of a join.
    match query {
        "q0" | "q1" | "q2" => {
            job.op(query, "flat-map", Some(query), "");
            job.chain(&["events", query, "out"]);
        }
        // Local item suggestion: people of three states and auctions of
        // category 10 in the host's regular join, by person id = seller.
        "q3" => {
            job.op("persons", "flat-map", Some("q3"), r#"config = { step = "persons" }"#);
            job.op("auctions", "flat-map", Some("q3"), r#"config = { step = "auctions" }"#);
            job.op("join", "join", None, "");
            job.op("result", "flat-map", Some("q3"), r#"config = { step = "result" }"#);
            job.chain(&["events", "persons"]);
            job.chain(&["events", "auctions"]);
            job.join_inputs("persons", "auctions", "join");
            job.chain(&["join", "result", "out"]);
        }
        // Average final price per category: auctions and their bids on one
        // stream keyed by auction id, in a keyed process (final price when
        // the auction closes), then a running average per category.
        "q4" => {
            job.op(
                "auctions-and-bids",
                "flat-map",
                Some("select"),
                r#"config = { auction = "id", bid = "auction" }"#,
            );
            job.op("final-price", "keyed-process", Some("q4_join"), "");
            job.op("average", "keyed-process", Some("q4_average"), "");
            job.chain(&["events", "auctions-and-bids", "final-price", "average", "out"]);
        }
        // Hot items: bids per auction in sliding windows of 10 s every 2 s
        // (the built-in count), re-keyed by window, then the auctions with
        // the most bids of each window.
        "q5" => {
            job.op("bids", "flat-map", Some("select"), r#"config = { bid = "auction" }"#);
            job.op(
                "counts",
                "window",
                None,
                r#"window = { assigner = "sliding", size_ms = 10000, slide_ms = 2000, aggregate = "count" }"#,
            );
            job.op("by-window", "map", Some("json-key"), r#"config = { field = "start" }"#);
            job.op("hot", "window", Some("q5"), r#"window = { assigner = "tumbling", size_ms = 2000 }"#);
            job.chain(&["events", "bids", "counts", "by-window", "hot", "out"]);
        }
        // Highest bid: the bids with the highest price of each tumbling
        // 10 s window, all bids under one key.
        "q7" => {
            job.op("bids", "flat-map", Some("select"), r#"config = { bid = "constant" }"#);
            job.op(
                "highest",
                "window",
                Some("q7"),
                r#"window = { assigner = "tumbling", size_ms = 10000 }"#,
            );
            job.chain(&["events", "bids", "highest", "out"]);
        }
        // New users: sellers per tumbling 10 s window (the built-in count),
        // then the host's window join with the people registered in the
        // same window.
        "q8" => {
            job.op("persons", "flat-map", Some("q8"), r#"config = { step = "persons" }"#);
            job.op("sellers", "flat-map", Some("select"), r#"config = { auction = "seller" }"#);
            job.op(
                "seller-windows",
                "window",
                None,
                r#"window = { assigner = "tumbling", size_ms = 10000, aggregate = "count" }"#,
            );
            job.op("join", "join", None, r#"join = { window = "tumbling", size_ms = 10000 }"#);
            job.op("result", "flat-map", Some("q8"), r#"config = { step = "result" }"#);
            job.chain(&["events", "persons"]);
            job.chain(&["events", "sellers", "seller-windows"]);
            job.join_inputs("persons", "seller-windows", "join");
            job.chain(&["join", "result", "out"]);
        }
        other => anyhow::bail!("unknown query `{other}`: one of {}", QUERIES.join(", ")),
    }
    job.toml += &format!("[[sinks]]\nname = \"out\"\nparallelism = {parallelism}\n{sink}\n");
    Ok(job.toml)
}

/// A job spec being written.
struct JobToml<'a> {
    toml: String,
    parallelism: u32,
    udfs: &'a Path,
}

impl JobToml<'_> {
    /// An operator; `component` names `udfs/nexmark/<component>` (or
    /// `json-key`); `rest` holds its other settings.
    fn op(&mut self, name: &str, kind: &str, component: Option<&str>, rest: &str) {
        self.toml += &format!(
            "[[operators]]\nname = \"{name}\"\nkind = \"{kind}\"\nparallelism = {}\n{rest}\n",
            self.parallelism
        );
        if let Some(c) = component {
            let file = if c == "json-key" {
                "json_key.wasm".to_owned()
            } else {
                format!("nexmark_{c}.wasm")
            };
            let path = toml::Value::String(self.udfs.join(file).display().to_string());
            self.toml += &format!("component = {path}\n");
        }
    }

    /// Edges from each node to the next.
    fn chain(&mut self, nodes: &[&str]) {
        for pair in nodes.windows(2) {
            self.toml += &format!("[[edges]]\nfrom = \"{}\"\nto = \"{}\"\n", pair[0], pair[1]);
        }
    }

    /// Edges into the two inputs of `to`.
    fn join_inputs(&mut self, left: &str, right: &str, to: &str) {
        for (input, from) in [left, right].into_iter().enumerate() {
            self.toml += &format!("[[edges]]\nfrom = \"{from}\"\nto = \"{to}\"\ninput = {input}\n");
        }
    }
}

/// Run the reference implementation of `query` over the events of
/// `settings`, calling `emit` with each output row (JSON). Returns the rows.
pub fn reference(query: &str, settings: &NexmarkSettings, emit: &mut dyn FnMut(&[u8])) -> anyhow::Result<u64> {
    let mut row = Vec::with_capacity(256);
    let mut rows = 0u64;
    let mut out = |row: &mut Vec<u8>, value: &dyn erased::Row| {
        row.clear();
        value.write(row);
        emit(row);
        rows += 1;
    };
    let events = settings.events(0, 1);
    match query {
        "q0" | "q1" => {
            for e in events {
                let Event::Bid(b) = e else { continue };
                if query == "q0" {
                    out(&mut row, &BidRow::of(&b, b.price));
                } else {
                    out(&mut row, &BidRow::of(&b, 0.908 * b.price as f64));
                }
            }
        }
        "q2" => {
            #[derive(Serialize)]
            struct Row {
                auction: usize,
                price: usize,
            }
            for e in events {
                if let Event::Bid(b) = e
                    && b.auction % 123 == 0
                {
                    out(
                        &mut row,
                        &Row {
                            auction: b.auction,
                            price: b.price,
                        },
                    );
                }
            }
        }
        "q3" => {
            // People of the three states by id, auctions of category 10;
            // every match, whichever came first.
            let mut persons: HashMap<usize, (String, String, String)> = HashMap::new();
            let mut auctions: Vec<(usize, usize)> = Vec::new();
            for e in events {
                match e {
                    Event::Person(p) if matches!(p.state.as_str(), "or" | "id" | "ca") => {
                        persons.insert(p.id, (p.name, p.city, p.state));
                    }
                    Event::Auction(a) if a.category == 10 => auctions.push((a.seller, a.id)),
                    _ => {}
                }
            }
            #[derive(Serialize)]
            struct Row<'a> {
                name: &'a str,
                city: &'a str,
                state: &'a str,
                id: usize,
            }
            for (seller, id) in auctions {
                if let Some((name, city, state)) = persons.get(&seller) {
                    out(&mut row, &Row { name, city, state, id });
                }
            }
        }
        "q8" => {
            // People with the window they registered in; sellers per window.
            let window = |t: u64| t as i64 - (t as i64).rem_euclid(10_000);
            let mut persons: Vec<(usize, String, i64)> = Vec::new();
            let mut sellers: foldhash::HashSet<(usize, i64)> = Default::default();
            for e in events {
                match e {
                    Event::Person(p) => persons.push((p.id, p.name, window(p.date_time))),
                    Event::Auction(a) => {
                        sellers.insert((a.seller, window(a.date_time)));
                    }
                    Event::Bid(_) => {}
                }
            }
            #[derive(Serialize)]
            struct Row<'a> {
                id: usize,
                name: &'a str,
                starttime: i64,
            }
            for (id, name, starttime) in &persons {
                if sellers.contains(&(*id, *starttime)) {
                    out(
                        &mut row,
                        &Row {
                            id: *id,
                            name,
                            starttime: *starttime,
                        },
                    );
                }
            }
        }
        "q4" => {
            // One pass. A bid may name an auction generated a little after
            // it: such bids wait for their auction (they can only count when
            // both have the same timestamp).
            let mut auctions: HashMap<usize, (usize, u64, u64)> = HashMap::new();
            let mut waiting: HashMap<usize, Vec<(usize, u64)>> = HashMap::new();
            let mut best: HashMap<usize, (usize, usize)> = HashMap::new();
            let offer = |best: &mut HashMap<usize, (usize, usize)>, (category, start, expires): (usize, u64, u64), id, price, at| {
                if (start..=expires).contains(&at) {
                    let (_, p) = best.entry(id).or_insert((category, 0));
                    *p = (*p).max(price);
                }
            };
            for e in events {
                match e {
                    Event::Auction(a) => {
                        let info = (a.category, a.date_time, a.expires);
                        auctions.insert(a.id, info);
                        for (price, at) in waiting.remove(&a.id).unwrap_or_default() {
                            offer(&mut best, info, a.id, price, at);
                        }
                    }
                    Event::Bid(b) => match auctions.get(&b.auction) {
                        Some(&info) => offer(&mut best, info, b.auction, b.price, b.date_time),
                        None => waiting.entry(b.auction).or_default().push((b.price, b.date_time)),
                    },
                    Event::Person(_) => {}
                }
            }
            // Auctions close in order of expiry; each closing with a price
            // updates its category's average, as the job's output does.
            let mut closing: Vec<(u64, usize, usize, usize)> = best
                .into_iter()
                .map(|(id, (category, price))| (auctions[&id].2, id, category, price))
                .collect();
            closing.sort_unstable();
            #[derive(Serialize)]
            struct Average {
                category: usize,
                avg: f64,
                auctions: u64,
            }
            let mut per_category: HashMap<usize, (u64, u64)> = HashMap::new();
            for (_, _, category, price) in closing {
                let (total, auctions) = per_category.entry(category).or_default();
                *total += price as u64;
                *auctions += 1;
                out(
                    &mut row,
                    &Average {
                        category,
                        avg: *total as f64 / *auctions as f64,
                        auctions: *auctions,
                    },
                );
            }
        }
        "q5" => {
            #[derive(Serialize)]
            struct Hot {
                auction: usize,
                num: u64,
                window_start: i64,
                window_end: i64,
            }
            // Bids per (window start, auction), sliding windows of 10 s every 2 s.
            let mut counts: HashMap<(i64, usize), u64> = HashMap::new();
            for e in events {
                let Event::Bid(b) = e else { continue };
                let t = b.date_time as i64;
                let last = t - t.rem_euclid(2000);
                for start in (last - 8000..=last).step_by(2000) {
                    *counts.entry((start, b.auction)).or_default() += 1;
                }
            }
            let mut max: HashMap<i64, u64> = HashMap::new();
            for (&(start, _), &n) in &counts {
                let m = max.entry(start).or_default();
                *m = (*m).max(n);
            }
            for (&(start, auction), &num) in &counts {
                if num == max[&start] {
                    out(
                        &mut row,
                        &Hot {
                            auction,
                            num,
                            window_start: start,
                            window_end: start + 10_000,
                        },
                    );
                }
            }
        }
        "q7" => {
            // Per tumbling 10 s window: the highest price and its bids.
            let mut highest: HashMap<i64, (usize, Vec<nexmark::event::Bid>)> = HashMap::new();
            for e in events {
                let Event::Bid(b) = e else { continue };
                let t = b.date_time as i64;
                let (price, bids) = highest.entry(t - t.rem_euclid(10_000)).or_insert((0, Vec::new()));
                if b.price > *price || bids.is_empty() {
                    *price = b.price;
                    bids.clear();
                }
                if b.price == *price {
                    bids.push(b);
                }
            }
            #[derive(Serialize)]
            struct Row<'a> {
                auction: usize,
                price: usize,
                bidder: usize,
                date_time: u64,
                extra: &'a str,
            }
            for (_, bids) in highest.values() {
                for b in bids {
                    out(
                        &mut row,
                        &Row {
                            auction: b.auction,
                            price: b.price,
                            bidder: b.bidder,
                            date_time: b.date_time,
                            extra: &b.extra,
                        },
                    );
                }
            }
        }
        other => anyhow::bail!("unknown query `{other}`: one of {}", QUERIES.join(", ")),
    }
    Ok(rows)
}

/// The rows of a query's job output that its reference produces: all of
/// them, except for q4, whose output is an updating result (a new average
/// per category at each closed auction, in an order that depends on the
/// interleaving of parallel subtasks): there the last row per category, the
/// one that counts the most auctions.
pub fn final_rows(query: &str, rows: Vec<String>) -> Vec<String> {
    if query != "q4" {
        return rows;
    }
    let mut last: HashMap<u64, (u64, String)> = HashMap::new();
    for row in rows {
        let v: serde_json::Value = serde_json::from_str(&row).unwrap_or_default();
        let (Some(category), Some(auctions)) = (v["category"].as_u64(), v["auctions"].as_u64()) else {
            continue;
        };
        let e = last.entry(category).or_insert((0, String::new()));
        if auctions >= e.0 {
            *e = (auctions, row);
        }
    }
    last.into_values().map(|(_, row)| row).collect()
}

/// A bid as q0 and q1 write it, with the price in dollars (q0) or euros (q1).
#[derive(Serialize)]
struct BidRow<'a, P> {
    auction: usize,
    bidder: usize,
    price: P,
    date_time: u64,
    extra: &'a str,
}

impl<'a, P> BidRow<'a, P> {
    fn of(b: &'a nexmark::event::Bid, price: P) -> Self {
        BidRow {
            auction: b.auction,
            bidder: b.bidder,
            price,
            date_time: b.date_time,
            extra: &b.extra,
        }
    }
}

/// Serialization behind a trait object, so `reference` has one `out`.
mod erased {
    pub trait Row {
        fn write(&self, out: &mut Vec<u8>);
    }

    impl<T: serde::Serialize> Row for T {
        fn write(&self, out: &mut Vec<u8>) {
            // Serializing plain structs of numbers and strings into a Vec cannot fail.
            let _ = serde_json::to_writer(out, self);
        }
    }
}
