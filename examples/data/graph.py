#!/usr/bin/env python3
"""Generate graph.csv and graph-adjacency.jsonl, the inputs of
examples/components.toml and examples/pagerank.toml (run once; the output is
committed). Deterministic: a fixed seed.

2,000 vertices (ids 0-1999, shuffled) in 60 components of sizes from 2 to
about 600. Every component is a directed ring through its vertices in a
random order plus random extra edges inside it, so every vertex has an
in-edge and an out-edge (PageRank's input needs both) and the components
are exactly the rings' vertex sets.

- graph.csv: `src,dst`, one directed edge per line (3,500 edges; connected
  components reads them as undirected).
- graph-adjacency.jsonl: one line per vertex,
  `{"vertex": v, "out": [w, ...], "in": n}` (out-neighbours, in-degree).
"""

import json
import random
from pathlib import Path

SEED = 20261203
VERTICES = 2000
COMPONENTS = 60
EXTRA_EDGES = 1500

rng = random.Random(SEED)
ids = list(range(VERTICES))
rng.shuffle(ids)
# Component sizes: a few large, many small, each at least 2.
weights = [rng.paretovariate(1.2) for _ in range(COMPONENTS)]
sizes = [2] * COMPONENTS
for _ in range(VERTICES - 2 * COMPONENTS):
    sizes[rng.choices(range(COMPONENTS), weights)[0]] += 1
components, at = [], 0
for s in sizes:
    components.append(ids[at : at + s])
    at += s
edges = set()
for c in components:
    ring = c[:]
    rng.shuffle(ring)
    for i, v in enumerate(ring):
        edges.add((v, ring[(i + 1) % len(ring)]))
big = [c for c in components if len(c) > 2]
while len(edges) < sum(sizes) + EXTRA_EDGES:
    c = rng.choices(big, [len(x) for x in big])[0]
    a, b = rng.sample(c, 2)
    edges.add((a, b))
edges = sorted(edges, key=lambda e: rng.random())
here = Path(__file__).parent
with open(here / "graph.csv", "w") as f:
    f.write("src,dst\n")
    for a, b in edges:
        f.write(f"{a},{b}\n")
out = {v: [] for v in range(VERTICES)}
indeg = {v: 0 for v in range(VERTICES)}
for a, b in edges:
    out[a].append(b)
    indeg[b] += 1
order = list(range(VERTICES))
rng.shuffle(order)
with open(here / "graph-adjacency.jsonl", "w") as f:
    for v in order:
        f.write(json.dumps({"vertex": v, "out": out[v], "in": indeg[v]}, separators=(",", ":")) + "\n")
print(f"{VERTICES} vertices, {len(edges)} edges, {COMPONENTS} components (largest {max(sizes)})")
