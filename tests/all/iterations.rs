//! Iterations: a keyed-process head whose feedback edge takes part of its
//! output back into its input 1. Connected components against union-find
//! and PageRank against power iteration, both computed here; the round
//! limit; feedback records in flight logged into snapshots (a savepoint
//! restored at another parallelism, SIGKILL crash loops).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde_json::Value;
use sluice::checkpoint::DecodedSnapshot;
use sluice::job::{JobGraph, JobSpec};

use crate::checkpoints::{committed, kill_loop, start};
use crate::harness::{lit, read_json_lines, root, run_toml, temp_dir, udf};

fn graph_edges() -> Vec<(u64, u64)> {
    let text = std::fs::read_to_string(root().join("examples/data/graph.csv")).unwrap();
    text.lines()
        .skip(1)
        .map(|l| {
            let (a, b) = l.split_once(',').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect()
}

/// Each vertex's component, named by its smallest vertex: union-find.
fn union_find(edges: &[(u64, u64)]) -> HashMap<u64, u64> {
    fn find(p: &mut HashMap<u64, u64>, x: u64) -> u64 {
        let mut r = x;
        while let Some(&up) = p.get(&r).filter(|&&up| up != r) {
            r = up;
        }
        let mut y = x;
        while y != r {
            let next = p[&y];
            p.insert(y, r);
            y = next;
        }
        r
    }
    let mut parent: HashMap<u64, u64> = HashMap::new();
    for &(a, b) in edges {
        parent.entry(a).or_insert(a);
        parent.entry(b).or_insert(b);
        let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
        if ra != rb {
            // The smaller root stays the root: it names the component.
            parent.insert(ra.max(rb), ra.min(rb));
        }
    }
    let vertices: Vec<u64> = parent.keys().copied().collect();
    vertices.into_iter().map(|v| (v, find(&mut parent, v))).collect()
}

/// The connected-components job of `examples/components.toml`, its source
/// read at `rate` records a second, with `extra` spec lines at the top.
fn components_job(parallelism: u32, rate: u64, extra: &str, sink: &str) -> String {
    format!(
        r#"
name = "components"
{extra}
[[sources]]
name = "edges"
kind = "file"
path = {graph}
format = "csv"
header = true
columns = ["src", "dst"]
key_field = "src"
records_per_second = {rate}
[[operators]]
name = "components"
kind = "keyed-process"
component = {udf}
parallelism = {parallelism}
[[sinks]]
name = "out"
kind = "file"
{sink}
[[edges]]
from = "edges"
to = "components"
[[edges]]
from = "components"
to = "components"
input = 1
feedback = true
where = {{ field = "kind", equals = "msg" }}
[[edges]]
from = "components"
to = "out"
where = {{ field = "kind", equals = "label" }}
"#,
        graph = lit(&root().join("examples/data/graph.csv")),
        udf = lit(&udf("components")),
    )
}

/// Label updates are exactly once: every vertex's labels are distinct,
/// include its own id (its first), and the smallest is its component.
fn assert_components(updates: &[(u64, u64)], expected: &HashMap<u64, u64>) {
    let mut by_vertex: HashMap<u64, Vec<u64>> = HashMap::new();
    for &(v, l) in updates {
        by_vertex.entry(v).or_default().push(l);
    }
    assert_eq!(by_vertex.len(), expected.len(), "vertices with a label");
    for (v, labels) in &by_vertex {
        let distinct: HashSet<&u64> = labels.iter().collect();
        assert_eq!(distinct.len(), labels.len(), "vertex {v}: a label update twice: {labels:?}");
        assert!(labels.contains(v), "vertex {v}: no first label");
        assert_eq!(labels.iter().min(), Some(&expected[v]), "vertex {v}: wrong component");
    }
}

fn label_updates<'a>(lines: impl IntoIterator<Item = &'a Value>) -> Vec<(u64, u64)> {
    lines
        .into_iter()
        .map(|l| {
            assert_eq!(l["kind"], "label", "only label updates reach the sink: {l}");
            (l["vertex"].as_u64().unwrap(), l["label"].as_u64().unwrap())
        })
        .collect()
}

fn parse_lines(lines: &[String]) -> Vec<Value> {
    lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn connected_components_equal_union_find() {
    let expected = union_find(&graph_edges());
    assert_eq!(expected.len(), 2000);
    assert_eq!(expected.values().collect::<HashSet<_>>().len(), 60, "components");
    for parallelism in [1, 3] {
        let dir = temp_dir("components");
        let out = dir.join("out.jsonl");
        let summary = run_toml(&components_job(parallelism, 1_000_000, "", &format!("path = {}", lit(&out))), &dir).unwrap();
        assert_eq!(summary.restarts, 0);
        let updates = label_updates(&read_json_lines(&out));
        assert_components(&updates, &expected);
        // In file order a vertex's labels only fall: its last is its component.
        let mut last = HashMap::new();
        for (v, l) in updates {
            if let Some(prev) = last.insert(v, l) {
                assert!(l < prev, "vertex {v}: label {l} after {prev}");
            }
        }
        assert_eq!(last, expected, "parallelism {parallelism}");
    }
}

fn adjacency() -> HashMap<u64, Vec<u64>> {
    let text = std::fs::read_to_string(root().join("examples/data/graph-adjacency.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let out = v["out"].as_array().unwrap().iter().map(|w| w.as_u64().unwrap()).collect();
            (v["vertex"].as_u64().unwrap(), out)
        })
        .collect()
}

/// `k` steps of power iteration from rank 1:
/// `r(v) = (1 - d) + d · Σ over u -> v of r(u) / outdeg(u)`.
fn power_iteration(adj: &HashMap<u64, Vec<u64>>, k: usize, d: f64) -> HashMap<u64, f64> {
    let mut rank: HashMap<u64, f64> = adj.keys().map(|&v| (v, 1.0)).collect();
    for _ in 0..k {
        let mut next: HashMap<u64, f64> = adj.keys().map(|&v| (v, 0.0)).collect();
        for (v, out) in adj {
            for w in out {
                *next.get_mut(w).unwrap() += rank[v] / out.len() as f64;
            }
        }
        rank = next.into_iter().map(|(v, s)| (v, (1.0 - d) + d * s)).collect();
    }
    rank
}

fn pagerank_job(parallelism: u32, rate: u64, extra: &str, sink: &str) -> String {
    format!(
        r#"
name = "pagerank"
{extra}
[[sources]]
name = "vertices"
kind = "file"
path = {graph}
format = "json"
key_field = "vertex"
records_per_second = {rate}
[[operators]]
name = "pagerank"
kind = "keyed-process"
component = {udf}
parallelism = {parallelism}
config = {{ damping = 0.85, iterations = 50 }}
[[sinks]]
name = "out"
kind = "file"
{sink}
[[edges]]
from = "vertices"
to = "pagerank"
[[edges]]
from = "pagerank"
to = "pagerank"
input = 1
feedback = true
max_rounds = 60
where = {{ field = "kind", equals = "share" }}
[[edges]]
from = "pagerank"
to = "out"
where = {{ field = "kind", equals = "rank" }}
"#,
        graph = lit(&root().join("examples/data/graph-adjacency.jsonl")),
        udf = lit(&udf("pagerank")),
    )
}

/// One rank per vertex, each within 1e-9 of 50 power-iteration steps made
/// here, and within 1e-4 of the converged PageRank (500 steps).
fn assert_pagerank(lines: &[Value], adj: &HashMap<u64, Vec<u64>>) {
    let fifty = power_iteration(adj, 50, 0.85);
    let converged = power_iteration(adj, 500, 0.85);
    let mut got = HashMap::new();
    for l in lines {
        assert_eq!(l["kind"], "rank", "{l}");
        let v = l["vertex"].as_u64().unwrap();
        assert!(got.insert(v, l["rank"].as_f64().unwrap()).is_none(), "vertex {v} ranked twice");
    }
    assert_eq!(got.len(), adj.len(), "every vertex ranked once");
    for (v, r) in &got {
        assert!((r - fifty[v]).abs() < 1e-9, "vertex {v}: {r} vs {} after 50 steps", fifty[v]);
        assert!((r - converged[v]).abs() < 1e-4, "vertex {v}: {r} vs converged {}", converged[v]);
    }
}

#[test]
fn pagerank_equals_power_iteration() {
    let adj = adjacency();
    assert_eq!(adj.len(), 2000);
    for parallelism in [2, 3] {
        let dir = temp_dir("pagerank");
        let out = dir.join("out.jsonl");
        run_toml(&pagerank_job(parallelism, 1_000_000, "", &format!("path = {}", lit(&out))), &dir).unwrap();
        assert_pagerank(&read_json_lines(&out), &adj);
    }
}

/// A step that sends every record round forever ends only at the round
/// limit: each input record makes exactly hops 0..=max_rounds; the end of
/// event time reaches the step only after that.
#[test]
fn max_rounds_ends_a_loop_whose_step_never_stops() {
    let dir = temp_dir("max-rounds");
    let input = dir.join("keys.jsonl");
    let keys = 300;
    let text: String = (0..keys).map(|k| format!("{{\"k\":\"k{k}\"}}\n")).collect();
    std::fs::write(&input, text).unwrap();
    let out = dir.join("out.jsonl");
    let toml = format!(
        r#"
name = "ping"
[[sources]]
name = "keys"
kind = "file"
path = {input}
format = "json"
key_field = "k"
[[operators]]
name = "ping"
kind = "keyed-process"
component = {ping}
parallelism = 2
[[sinks]]
name = "out"
kind = "file"
path = {out}
[[edges]]
from = "keys"
to = "ping"
[[edges]]
from = "ping"
to = "ping"
input = 1
feedback = true
max_rounds = 7
[[edges]]
from = "ping"
to = "out"
"#,
        input = lit(&input),
        ping = lit(&udf("ping")),
        out = lit(&out),
    );
    run_toml(&toml, &dir).unwrap();
    let (mut hops, mut ends): (HashMap<u32, u32>, HashMap<u32, u32>) = Default::default();
    for l in read_json_lines(&out) {
        let n = l["hops"].as_u64().unwrap() as u32;
        match l["kind"].as_str().unwrap() {
            "hop" => *hops.entry(n).or_default() += 1,
            _ => *ends.entry(n).or_default() += 1,
        }
    }
    let expected: HashMap<u32, u32> = (0..=7).map(|h| (h, keys)).collect();
    assert_eq!(hops, expected, "hops 0..=7, once per key each");
    // A timer at the end of event time fires only once the loop is empty:
    // every key has received its 7 hops by then.
    assert_eq!(ends, HashMap::from([(7, keys)]), "one end per key, after all its hops");
}

#[test]
fn feedback_edges_are_checked() {
    let dir = temp_dir("feedback-checks");
    let sink = format!("path = {}", lit(&dir.join("out.jsonl")));
    let base = components_job(2, 1000, "", &sink);
    let err = |toml: &str| {
        JobGraph::build(JobSpec::from_toml(toml).unwrap(), &dir)
            .expect_err("must be refused")
            .to_string()
    };
    let cases = [
        (base.replace("feedback = true\n", ""), "mark it `feedback = true`"),
        (
            base.replace("input = 1\nfeedback", "input = 0\nfeedback"),
            "feeds input 1 of the head",
        ),
        (
            base.replace("max_rounds", "x")
                .replace("feedback = true\n", "feedback = true\nmax_rounds = 0\n"),
            "at least 1",
        ),
        (format!("mode = \"batch\"\n{base}"), "iterations run in streaming mode"),
        (
            base.replace("to = \"out\"\nwhere", "to = \"out\"\nmax_rounds = 3\nwhere"),
            "`max_rounds` is for a feedback edge",
        ),
        (
            base.replace("field = \"kind\", equals = \"msg\"", "field = \"\", equals = \"msg\""),
            "needs a `field`",
        ),
    ];
    for (toml, want) in cases {
        let e = err(&toml);
        assert!(e.contains(want), "{want:?} not in {e}");
    }
    // A feedback edge between two operators is refused.
    let two =
        base.replace(
            "[[sinks]]",
            "[[operators]]\nname = \"relay\"\nkind = \"keyed-process\"\ncomponent = \"x.wasm\"\n[[sinks]]",
        )
        .replace(
            "from = \"components\"\nto = \"components\"",
            "from = \"relay\"\nto = \"components\"",
        ) + "[[edges]]\nfrom = \"components\"\nto = \"relay\"\n";
    assert!(err(&two).contains("back to itself"), "{}", err(&two));
    // The plan shows the loop.
    let plan = JobGraph::build(JobSpec::from_toml(&base).unwrap(), &dir).unwrap();
    let text = sluice::job::explain::Plan::of(&plan).to_text();
    assert!(text.contains("feedback") && text.contains("where kind = \"msg\""), "{text}");
}

/// Bytes of feedback records logged in the snapshots of `operator` under
/// `dir` (every complete checkpoint or savepoint).
fn logged_bytes(dir: &Path, operator: &str) -> usize {
    let mut total = 0;
    let mut dirs = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(operator))
                && p.parent().is_some_and(|d| d.join("_metadata.json").exists())
                && let Ok(snap) = DecodedSnapshot::decode(&std::fs::read(&p).unwrap())
            {
                total += snap.operator_state("feedback").map_or(0, <[u8]>::len);
            }
        }
    }
    total
}

const CHECKPOINTED: &str = r#"restart = { strategy = "fixed-delay", attempts = 3, delay_ms = 50 }
[checkpoints]
interval_ms = 100
dir = "ckpt"
retain = 1000"#;

/// A checkpoint taken while shares were in flight (they are logged in it),
/// restored at another parallelism after the job has finished (the output
/// committed after it is rolled back and made again): the ranks are exact.
#[test]
fn a_checkpoint_of_an_iteration_keeps_its_records_in_flight_and_rescales() {
    let adj = adjacency();
    for new_par in [3, 1] {
        let dir = temp_dir("pagerank-rescale");
        let sink = "path = \"out\"\nparallelism = 2";
        start(&pagerank_job(2, 800, CHECKPOINTED, sink), &dir, None).wait().unwrap();
        assert_pagerank(&parse_lines(&committed(&dir.join("out"))), &adj);
        let mut chk: Vec<_> = std::fs::read_dir(dir.join("ckpt"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("chk-")))
            .filter(|p| logged_bytes(p, "pagerank") > 0)
            .collect();
        chk.sort();
        eprintln!("{} checkpoints logged shares in flight", chk.len());
        let Some(middle) = chk.get(chk.len() / 2).cloned() else {
            panic!("no checkpoint logged shares in flight");
        };
        let summary = start(&pagerank_job(new_par, 1_000_000, CHECKPOINTED, sink), &dir, Some(middle))
            .wait()
            .unwrap();
        assert_eq!(summary.restarts, 0);
        assert_pagerank(&parse_lines(&committed(&dir.join("out"))), &adj);
    }
}

/// kill -9 at random moments, restarted from the latest checkpoint each
/// time: the final output is exact (PageRank: one rank per vertex, as in
/// an uninterrupted run; components: no update twice, the right
/// components), and some checkpoint logged feedback records in flight.
#[test]
fn iterative_jobs_survive_sigkill_with_exact_output() {
    let adj = adjacency();
    let mut logged = 0;
    let sink = "path = \"out\"\nparallelism = 2";
    kill_loop(
        "pagerank-crash",
        &pagerank_job(2, 700, CHECKPOINTED, sink),
        5,
        || {},
        |dir| {
            assert_pagerank(&parse_lines(&committed(&dir.join("out"))), &adj);
            logged += logged_bytes(&dir.join("ckpt"), "pagerank");
        },
    );
    assert!(logged > 0, "no checkpoint logged records in flight");
    let expected = union_find(&graph_edges());
    kill_loop(
        "components-crash",
        &components_job(2, 1000, CHECKPOINTED, sink),
        5,
        || {},
        |dir| {
            let lines = parse_lines(&committed(&dir.join("out")));
            assert_components(&label_updates(&lines), &expected);
        },
    );
}
