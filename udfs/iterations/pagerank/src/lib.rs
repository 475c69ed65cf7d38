//! `pagerank`: the step of an iterative PageRank job (power iteration by
//! message passing), the head of a loop whose feedback edge carries the
//! rank shares back into its input 1.
//!
//! Input 0: one record per vertex, `{"vertex": v, "out": [w, …], "in": n}`,
//! keyed by `v`: its out-neighbours and its in-degree (every vertex needs
//! at least one in- and one out-edge). Input 1 (the feedback edge): shares
//! `{"kind": "share", "to": w, "round": k, "share": x}`, keyed by `w`.
//!
//! Every vertex starts with rank 1 and sends `rank / out-degree` to each
//! out-neighbour as round 1. Once a vertex has all `n` shares of round `k`
//! it has its rank of round `k`, `(1 - d) + d · Σ shares`, and sends its
//! shares of round `k + 1` — until round `iterations` (config, default
//! 50), when it emits `{"kind": "rank", "vertex": v, "rank": r}` and sends
//! nothing more: the loop empties and the job ends. Shares of later rounds
//! may arrive before a vertex has finished a round: they wait in state.
//!
//! Config: `{"damping": 0.85, "iterations": 50}`.

use sluice_guest::{CoKeyedProcess, Collector, Error, MapState, Record, ValueState};

#[derive(serde::Deserialize)]
struct Config {
    #[serde(default = "damping")]
    damping: f64,
    #[serde(default = "iterations")]
    iterations: u32,
}

fn damping() -> f64 {
    0.85
}

fn iterations() -> u32 {
    50
}

#[derive(serde::Deserialize)]
struct Vertex {
    out: Vec<u64>,
    #[serde(rename = "in")]
    in_degree: u32,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Share {
    kind: String,
    to: u64,
    round: u32,
    share: f64,
}

#[derive(serde::Serialize)]
struct Rank {
    kind: &'static str,
    vertex: u64,
    rank: f64,
}

struct PageRank {
    config: Config,
    out: ValueState<Vec<u64>>,
    in_degree: ValueState<u32>,
    /// The last round whose rank this vertex has.
    done: ValueState<u32>,
    /// Shares received, by round: (sum, count).
    shares: MapState<u32, (f64, u32)>,
}

fn vertex(record: &Record<'_>) -> Result<u64, Error> {
    let key = record.key.ok_or_else(|| Error::from("a record without a key"))?;
    std::str::from_utf8(key)?
        .trim()
        .parse::<u64>()
        .map_err(|e| Error::from(format!("the key is not a vertex id: {e}")))
}

impl PageRank {
    fn send(&self, out_edges: &[u64], round: u32, rank: f64, ts: Option<i64>, out: &mut Collector) -> Result<(), Error> {
        let share = rank / out_edges.len() as f64;
        for &to in out_edges {
            let s = Share {
                kind: "share".into(),
                to,
                round,
                share,
            };
            out.emit_json(Some(to.to_string().as_bytes()), &s, ts)?;
        }
        Ok(())
    }

    /// Finish every round whose shares have all arrived.
    fn advance(&self, v: u64, ts: Option<i64>, out: &mut Collector) -> Result<(), Error> {
        let (Some(out_edges), Some(n)) = (self.out.get()?, self.in_degree.get()?) else {
            return Ok(());
        };
        let mut done = self.done.get()?.unwrap_or(0);
        while done < self.config.iterations {
            let round = done + 1;
            let Some((sum, count)) = self.shares.get(&round)? else { break };
            if count < n {
                break;
            }
            self.shares.remove(&round)?;
            let rank = (1.0 - self.config.damping) + self.config.damping * sum;
            done = round;
            self.done.set(done)?;
            if done == self.config.iterations {
                let r = Rank {
                    kind: "rank",
                    vertex: v,
                    rank,
                };
                out.emit_json(Some(v.to_string().as_bytes()), &r, ts)?;
            } else {
                self.send(&out_edges, round + 1, rank, ts, out)?;
            }
        }
        Ok(())
    }
}

impl CoKeyedProcess for PageRank {
    fn open(config: &str) -> Result<Self, Error> {
        let config: Config = serde_json::from_str(config)?;
        if !(0.0..1.0).contains(&config.damping) || config.iterations == 0 {
            return Err(Error::from("`damping` must be in [0, 1) and `iterations` at least 1"));
        }
        Ok(PageRank {
            config,
            out: ValueState::new("out")?,
            in_degree: ValueState::new("in")?,
            done: ValueState::new("done")?,
            shares: MapState::new("shares")?,
        })
    }

    fn process1(&mut self, record: Record<'_>, out: &mut Collector) -> Result<(), Error> {
        let v = vertex(&record)?;
        let vx: Vertex = serde_json::from_slice(record.value)?;
        if vx.out.is_empty() || vx.in_degree == 0 {
            return Err(Error::from(format!("vertex {v} needs an out-edge and an in-edge")));
        }
        self.send(&vx.out, 1, 1.0, record.timestamp, out)?;
        self.out.set(vx.out)?;
        self.in_degree.set(vx.in_degree)?;
        self.advance(v, record.timestamp, out)
    }

    fn process2(&mut self, record: Record<'_>, out: &mut Collector) -> Result<(), Error> {
        let v = vertex(&record)?;
        let s: Share = serde_json::from_slice(record.value)?;
        let (sum, count) = self.shares.get(&s.round)?.unwrap_or((0.0, 0));
        self.shares.insert(&s.round, &(sum + s.share, count + 1))?;
        self.advance(v, record.timestamp, out)
    }
}

sluice_guest::export_co_keyed_process!(PageRank);
