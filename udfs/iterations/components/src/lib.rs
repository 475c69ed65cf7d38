//! `components`: the step of an iterative connected-components job (label
//! propagation), the head of a loop whose feedback edge carries its
//! messages back into its input 1.
//!
//! Input 0: the graph's edges `{"src": a, "dst": b}` (undirected), keyed by
//! `a`. Input 1 (the feedback edge): messages
//! `{"kind": "msg", "to": v, "from": u, "label": l}`, keyed by `v`: "`u`, a
//! neighbour of yours, has label `l`". Every vertex starts with its own id
//! as label and keeps the smallest label it hears of; a vertex whose label
//! drops tells its neighbours, and a vertex that hears of a larger label
//! answers with its own. No message is sent once every vertex of a
//! component holds the component's smallest id, so the loop empties and
//! the job ends (on a bounded input).
//!
//! Output: messages (to the feedback edge, `where kind = "msg"`) and label
//! updates `{"kind": "label", "vertex": v, "label": l}`, keyed by `v`, one
//! each time a vertex's label changes: a vertex's last update is its
//! component (the smallest vertex id in it).
//!
//! State per vertex: `label` (a value) and `neighbours` (a map used as a set).

use serde::Deserialize;
use sluice_guest::{CoKeyedProcess, Collector, Error, MapState, Record, ValueState};

struct Components {
    label: ValueState<u64>,
    neighbours: MapState<u64, u8>,
}

#[derive(serde::Deserialize)]
struct Edge {
    #[serde(deserialize_with = "id")]
    dst: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Message {
    kind: String,
    to: u64,
    from: u64,
    label: u64,
}

#[derive(serde::Serialize)]
struct Label {
    kind: &'static str,
    vertex: u64,
    label: u64,
}

/// A vertex id written as a number or as a string of digits (CSV fields
/// are strings).
fn id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Id {
        N(u64),
        S(String),
    }
    match Id::deserialize(d)? {
        Id::N(n) => Ok(n),
        Id::S(s) => s.trim().parse().map_err(serde::de::Error::custom),
    }
}

fn vertex(record: &Record<'_>) -> Result<u64, Error> {
    let key = record.key.ok_or_else(|| Error::from("a record without a key"))?;
    std::str::from_utf8(key)?
        .trim()
        .parse::<u64>()
        .map_err(|e| Error::from(format!("the key is not a vertex id: {e}")))
}

fn send(to: u64, from: u64, label: u64, ts: Option<i64>, out: &mut Collector) -> Result<(), Error> {
    let m = Message {
        kind: "msg".into(),
        to,
        from,
        label,
    };
    out.emit_json(Some(to.to_string().as_bytes()), &m, ts)
}

impl Components {
    /// The vertex's label, set to its own id (and reported) the first time.
    fn label(&self, v: u64, ts: Option<i64>, out: &mut Collector) -> Result<u64, Error> {
        match self.label.get()? {
            Some(l) => Ok(l),
            None => self.relabel(v, v, ts, out).map(|()| v),
        }
    }

    fn relabel(&self, v: u64, label: u64, ts: Option<i64>, out: &mut Collector) -> Result<(), Error> {
        self.label.set(label)?;
        let update = Label {
            kind: "label",
            vertex: v,
            label,
        };
        out.emit_json(Some(v.to_string().as_bytes()), &update, ts)
    }

    fn add_neighbour(&self, u: u64) -> Result<(), Error> {
        if self.neighbours.get(&u)?.is_none() {
            self.neighbours.insert(&u, &1)?;
        }
        Ok(())
    }
}

impl CoKeyedProcess for Components {
    fn open(_config: &str) -> Result<Self, Error> {
        Ok(Components {
            label: ValueState::new("label")?,
            neighbours: MapState::new("neighbours")?,
        })
    }

    /// An edge `v - u`: `u` is a neighbour; tell it `v`'s label (which also
    /// tells it that `v` is its neighbour).
    fn process1(&mut self, record: Record<'_>, out: &mut Collector) -> Result<(), Error> {
        let v = vertex(&record)?;
        let edge: Edge = serde_json::from_slice(record.value)?;
        if edge.dst == v {
            self.label(v, record.timestamp, out)?;
            return Ok(());
        }
        self.add_neighbour(edge.dst)?;
        let label = self.label(v, record.timestamp, out)?;
        send(edge.dst, v, label, record.timestamp, out)
    }

    /// A neighbour's label.
    fn process2(&mut self, record: Record<'_>, out: &mut Collector) -> Result<(), Error> {
        let v = vertex(&record)?;
        let m: Message = serde_json::from_slice(record.value)?;
        self.add_neighbour(m.from)?;
        let mine = self.label(v, record.timestamp, out)?;
        if m.label < mine {
            self.relabel(v, m.label, record.timestamp, out)?;
            for (n, _) in self.neighbours.entries()? {
                if n != m.from {
                    send(n, v, m.label, record.timestamp, out)?;
                }
            }
        } else if mine < m.label {
            send(m.from, v, mine, record.timestamp, out)?;
        }
        Ok(())
    }
}

sluice_guest::export_co_keyed_process!(Components);
