//! `sluice new NAME --lang L --kind K`: a UDF project outside this
//! repository that builds to a component with one documented command, with a
//! job spec and sample input that run it (`sluice run job.toml`).
//!
//! Every project carries what its language's tools need: Rust depends on
//! the guest SDK by path (it is not published yet); Python, JavaScript and C
//! get copies of the helper module and of the WIT package built into this
//! binary, so they build from their own directory.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The helper modules and WIT, as this binary ships them.
const PYTHON_HELPER: &str = include_str!("../../guest-python/sluice.py");
const JS_HELPER: &str = include_str!("../../guest-js/sluice.js");
const JS_KEYED_HELPER: &str = include_str!("../../guest-js/sluice-keyed.js");
const JS_PACKAGE: &str = include_str!("../../guest-js/package.json");
const C_HELPER: &str = include_str!("../../guest-c/sluice.h");
/// componentize-py, as `scripts/build-guests` pins it.
const COMPONENTIZE_PY: &str = "0.25.1";

/// The languages `sluice new` writes, and the kinds each offers.
pub const OFFERED: &[(&str, &[&str])] = &[
    ("rust", &["map", "filter", "flat-map", "keyed-process", "window-aggregate"]),
    ("python", &["map", "filter", "flat-map", "keyed-process"]),
    ("js", &["map", "filter", "flat-map", "keyed-process"]),
    ("c", &["flat-map", "keyed-process"]),
];

/// Sample input of the JSON-record kinds: purchases by user, in event time.
const INPUT_JSONL: &str = r#"{"user": "alice", "amount": 12, "ts": 1000}
{"user": "bob", "amount": 3, "ts": 2500}
{"user": "alice", "amount": 7, "ts": 4000}
{"user": "carol", "amount": 25, "ts": 6000}
{"user": "bob", "amount": 14, "ts": 9500}
{"user": "alice", "amount": 1, "ts": 11000}
{"user": "carol", "amount": 9, "ts": 13000}
{"user": "bob", "amount": 30, "ts": 16000}
{"user": "alice", "amount": 18, "ts": 21000}
{"user": "carol", "amount": 2, "ts": 24000}
"#;

/// Sample input of flat-map: lines of text.
const INPUT_TXT: &str = "The quick brown fox\njumps over the lazy dog\nthe dog sleeps\n";

/// What a kind does to the sample, for the project's README.
fn behaviour(kind: &str) -> &'static str {
    match kind {
        "map" => "adds `\"large\": amount >= 10` to every purchase",
        "filter" => "keeps the purchases with an amount of at least 10",
        "flat-map" => "splits each line into lowercase words, one record per word, keyed by the word",
        "keyed-process" => "counts purchases per user in keyed state and emits `{\"user\", \"count\"}` on every update",
        _ => "sums the amounts per user in 10-second tumbling event-time windows: `{\"user\", \"start\", \"end\", \"sum\"}`",
    }
}

fn world(kind: &str) -> &'static str {
    match kind {
        "keyed-process" => "keyed-process",
        "window-aggregate" => "window-aggregate",
        _ => "stateless",
    }
}

/// Where the guest SDK is when this binary was built from a checkout.
fn default_sdk() -> Option<PathBuf> {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk");
    sdk.join("Cargo.toml").is_file().then(|| sdk.canonicalize().unwrap_or(sdk))
}

/// The generated Rust project's `.cargo/config.toml`: builds for wasm32-wasip2, with the
/// WebAssembly SIMD instructions on (wasmtime compiles them to native vector code; byte loops
/// such as UTF-8 checks and searches run several bytes per instruction with them).
const RUST_CARGO_CONFIG: &str = "[build]\ntarget = \"wasm32-wasip2\"\n\n\
[target.wasm32-wasip2]\nrustflags = [\"-C\", \"target-feature=+simd128\"]\n";

/// Create the project `dir` (its last component names the UDF). `sdk`: the
/// guest SDK's directory for a Rust project (default: the checkout this
/// binary was built from). Returns the files written.
pub fn create(dir: &Path, lang: &str, kind: &str, sdk: Option<&Path>) -> Result<Vec<PathBuf>> {
    let Some((_, kinds)) = OFFERED.iter().find(|(l, _)| *l == lang) else {
        bail!(
            "unknown language `{lang}`: `sluice new` writes {}",
            OFFERED.iter().map(|(l, _)| *l).collect::<Vec<_>>().join(", ")
        );
    };
    if !kinds.contains(&kind) {
        bail!("`sluice new --lang {lang}` offers the kinds {}, not `{kind}`", kinds.join(", "));
    }
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .filter(|n| n.starts_with(|c: char| c.is_ascii_alphabetic()))
        .with_context(|| {
            format!(
                "{}: a project's name (the directory's last part) starts with a letter and has only letters, digits, `-` and `_`",
                dir.display()
            )
        })?
        .to_owned();
    if dir.exists() && std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} exists and is not empty", dir.display());
    }
    let component = match lang {
        "rust" => format!("target/wasm32-wasip2/release/{}.wasm", name.replace('-', "_")),
        _ => format!("{name}.wasm"),
    };
    let mut files: Vec<(String, String)> = vec![
        ("job.toml".into(), job_spec(&name, kind, &component)),
        (input_file(kind).into(), input(kind).into()),
    ];
    let build = match lang {
        "rust" => {
            let sdk = match sdk {
                Some(s) => s.to_owned(),
                None => {
                    default_sdk().context("where is the guest SDK? pass `--sdk PATH` (the `guest-sdk` directory of a Sluice checkout)")?
                }
            };
            if !sdk.join("Cargo.toml").is_file() {
                bail!(
                    "{}: no Cargo.toml: `--sdk` names the `guest-sdk` directory of a Sluice checkout",
                    sdk.display()
                );
            }
            let sdk = sdk.canonicalize().unwrap_or(sdk);
            files.push(("Cargo.toml".into(), rust_manifest(&name, &sdk)));
            files.push((".cargo/config.toml".into(), RUST_CARGO_CONFIG.into()));
            files.push(("src/lib.rs".into(), rust_source(kind)));
            files.push((".gitignore".into(), "/target\n/out.jsonl\n".into()));
            "rustup target add wasm32-wasip2   # once\ncargo build --release".to_owned()
        }
        "python" => {
            files.push(("app.py".into(), python_source(kind)));
            files.push(("sluice.py".into(), PYTHON_HELPER.into()));
            files.push(("wit/udf.wit".into(), sluice::toolchain::UDF_WIT.into()));
            files.push((".gitignore".into(), format!("/{name}.wasm\n/out.jsonl\n__pycache__/\n")));
            let cmd = format!("componentize-py -d wit -w {} componentize app -p . -o {name}.wasm", world(kind));
            files.push(("build.sh".into(), format!("#!/bin/sh\nset -e\ncd \"$(dirname \"$0\")\"\n{cmd}\n")));
            format!("pip install componentize-py=={COMPONENTIZE_PY}   # once\n./build.sh   # {cmd}")
        }
        "js" => {
            files.push(("app.js".into(), js_source(kind)));
            files.push(("sluice.js".into(), JS_HELPER.into()));
            files.push(("sluice-keyed.js".into(), JS_KEYED_HELPER.into()));
            files.push(("wit/udf.wit".into(), sluice::toolchain::UDF_WIT.into()));
            files.push(("package.json".into(), js_package(&name, kind)?));
            files.push((".gitignore".into(), format!("/{name}.wasm\n/out.jsonl\n/node_modules\n")));
            "npm install   # once\nnpm run build".to_owned()
        }
        _ => {
            files.push((format!("{name}.c"), c_source(kind)));
            files.push(("sluice.h".into(), C_HELPER.into()));
            files.push(("build.sh".into(), c_build(&name, kind)));
            files.push((".gitignore".into(), format!("/{name}.wasm\n/out.jsonl\n/bindings\n/*.core.wasm\n")));
            "sudo apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32   # once (Debian)\n./build.sh".to_owned()
        }
    };
    files.push(("README.md".into(), readme(&name, lang, kind, &build, &component)));
    let mut written = Vec::new();
    for (path, text) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        if path.file_name().is_some_and(|n| n == "build.sh") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("making {} executable", path.display()))?;
        }
        written.push(path);
    }
    Ok(written)
}

fn input_file(kind: &str) -> &'static str {
    if kind == "flat-map" { "input.txt" } else { "input.jsonl" }
}

fn input(kind: &str) -> &'static str {
    if kind == "flat-map" { INPUT_TXT } else { INPUT_JSONL }
}

fn job_spec(name: &str, kind: &str, component: &str) -> String {
    let mut s = format!("# `sluice run job.toml` runs the UDF over the sample input into out.jsonl.\nname = \"{name}\"\n\n");
    if kind == "flat-map" {
        s.push_str("[[sources]]\nname = \"lines\"\nkind = \"file\"\npath = \"input.txt\"\n\n");
    } else {
        s.push_str(
            "[[sources]]\nname = \"purchases\"\nkind = \"file\"\npath = \"input.jsonl\"\nformat = \"json\"\n\
             key_field = \"user\"        # the record key (Flink's keyBy)\ntimestamp_field = \"ts\"     # event time, ms\n\
             watermarks = { strategy = \"bounded\", max_out_of_orderness_ms = 1000, interval_ms = 0 }\n\n",
        );
    }
    let op_kind = match kind {
        "window-aggregate" => "window",
        k => k,
    };
    let _ = write!(
        s,
        "[[operators]]\nname = \"{name}\"\nkind = \"{op_kind}\"\ncomponent = \"{component}\"\n"
    );
    if kind == "window-aggregate" {
        s.push_str("window = { assigner = \"tumbling\", size_ms = 10000 }\n");
    }
    let source = if kind == "flat-map" { "lines" } else { "purchases" };
    let _ = write!(
        s,
        "\n[[sinks]]\nname = \"out\"\nkind = \"file\"\npath = \"out.jsonl\"\n\n\
         [[edges]]\nfrom = \"{source}\"\nto = \"{name}\"\n\n[[edges]]\nfrom = \"{name}\"\nto = \"out\"\n"
    );
    s
}

fn readme(name: &str, lang: &str, kind: &str, build: &str, component: &str) -> String {
    format!(
        "# {name}\n\nA Sluice UDF in {lang}, kind `{kind}` (world `{world}`): it {what}.\n\n\
         ## Build\n\n```sh\n{build}\n```\n\nThe component is `{component}`.\n\n\
         ## Run\n\n```sh\nsluice run job.toml      # writes out.jsonl\nsluice check job.toml    # validate without running\n\
         sluice plan job.toml     # the tasks and partitioners\nsluice inspect {component}\n```\n\n\
         On a server: `sluice submit job.toml` uploads the component and runs it there\n\
         (put the input first: `sluice put {input} {input}`).\n\n\
         The job spec's fields are in docs/job-spec.md of the Sluice repository.\n",
        world = world(kind),
        what = behaviour(kind),
        input = input_file(kind),
    )
}

fn rust_manifest(name: &str, sdk: &Path) -> String {
    format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n\
         # A UDF is a `cdylib`: built for wasm32-wasip2 (see .cargo/config.toml) it is a\n\
         # WebAssembly component, target/wasm32-wasip2/release/{file}.wasm.\n\
         [lib]\ncrate-type = [\"cdylib\"]\n\n[dependencies]\n\
         # The guest SDK is not on crates.io yet: a path (or git) dependency.\n\
         sluice-guest = {{ path = {sdk:?} }}\nserde = {{ version = \"1\", features = [\"derive\"] }}\nserde_json = \"1\"\n\n\
         # The profile the UDFs shipped with Sluice use.\n[profile.release]\nopt-level = 3\nlto = true\n\n\
         # A project of its own, not a member of an enclosing workspace.\n[workspace]\n",
        file = name.replace('-', "_"),
        sdk = sdk.display().to_string(),
    )
}

fn rust_source(kind: &str) -> String {
    let body = match kind {
        "map" => {
            r#"use sluice_guest::{Error, Map, Output, Record};

struct Udf;

impl Map for Udf {
    fn open(_config: &str) -> Result<Self, Error> {
        Ok(Udf)
    }

    fn map<'a>(&mut self, record: Record<'a>) -> Result<Output<'a>, Error> {
        let mut purchase: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(record.value)?;
        let amount = purchase.get("amount").and_then(|a| a.as_f64()).unwrap_or(0.0);
        purchase.insert("large".into(), (amount >= 10.0).into());
        let out = Output::value(serde_json::to_vec(&purchase)?).timestamp(record.timestamp);
        Ok(match record.key {
            Some(k) => out.key(k),
            None => out,
        })
    }
}

sluice_guest::export_map!(Udf);
"#
        }
        "filter" => {
            r#"use sluice_guest::{Error, Filter, Record};

struct Udf;

#[derive(serde::Deserialize)]
struct Purchase {
    amount: f64,
}

impl Filter for Udf {
    fn open(_config: &str) -> Result<Self, Error> {
        Ok(Udf)
    }

    fn filter(&mut self, record: &Record<'_>) -> Result<bool, Error> {
        let p: Purchase = serde_json::from_slice(record.value)?;
        Ok(p.amount >= 10.0)
    }
}

sluice_guest::export_filter!(Udf);
"#
        }
        "flat-map" => {
            r#"use sluice_guest::{Collector, Error, FlatMap, Record};

struct Udf;

impl FlatMap for Udf {
    fn open(_config: &str) -> Result<Self, Error> {
        Ok(Udf)
    }

    fn flat_map(&mut self, record: Record<'_>, out: &mut Collector) -> Result<(), Error> {
        let line = std::str::from_utf8(record.value)?;
        for word in line.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty()) {
            let word = word.to_ascii_lowercase();
            out.emit_json(Some(word.as_bytes()), &serde_json::json!({ "word": word }), record.timestamp)?;
        }
        Ok(())
    }
}

sluice_guest::export_flat_map!(Udf);
"#
        }
        "keyed-process" => {
            r#"use sluice_guest::{Collector, Error, KeyedProcess, Record, ValueState};

struct Udf {
    /// Purchases of the record's user: host-owned keyed state, in checkpoints.
    count: ValueState<u64>,
}

impl KeyedProcess for Udf {
    fn open(_config: &str) -> Result<Self, Error> {
        Ok(Udf {
            count: ValueState::new("count")?,
        })
    }

    fn process(&mut self, record: Record<'_>, out: &mut Collector) -> Result<(), Error> {
        let key = record.key.unwrap_or_default();
        let count = self.count.get()?.unwrap_or(0) + 1;
        self.count.set(count)?;
        let user = std::str::from_utf8(key)?;
        out.emit_json(Some(key), &serde_json::json!({ "user": user, "count": count }), record.timestamp)
    }
}

sluice_guest::export_keyed_process!(Udf);
"#
        }
        _ => {
            r#"use sluice_guest::{Aggregate, Collector, Error, Record, Window};

struct Udf;

#[derive(serde::Deserialize)]
struct Purchase {
    amount: f64,
}

impl Aggregate for Udf {
    /// The accumulator the host keeps per user and window.
    type Acc = f64;

    fn open(_config: &str) -> Result<Self, Error> {
        Ok(Udf)
    }

    fn create(&mut self) -> f64 {
        0.0
    }

    fn add(&mut self, acc: &mut f64, record: &Record<'_>) -> Result<(), Error> {
        let p: Purchase = serde_json::from_slice(record.value)?;
        *acc += p.amount;
        Ok(())
    }

    fn merge(&mut self, acc: &mut f64, other: f64) {
        *acc += other;
    }

    fn result(&mut self, key: &[u8], window: Window, sum: f64, out: &mut Collector) -> Result<(), Error> {
        let user = std::str::from_utf8(key)?;
        let value = serde_json::json!({ "user": user, "start": window.start, "end": window.end, "sum": sum });
        out.emit_json(Some(key), &value, Some(window.max_timestamp()))
    }
}

sluice_guest::export_aggregate!(Udf);
"#
        }
    };
    format!("//! {}\n\n{body}", behaviour_doc(kind))
}

fn behaviour_doc(kind: &str) -> String {
    format!("This UDF {}.", behaviour(kind))
}

fn python_source(kind: &str) -> String {
    let body = match kind {
        "map" => {
            r#"import json

import sluice


class Udf(sluice.Map):
    def map(self, record):
        purchase = record.value_json()
        purchase["large"] = purchase.get("amount", 0) >= 10
        return record.key, json.dumps(purchase, separators=(",", ":")), record.timestamp


StatelessOperator = sluice.export_map(Udf)
"#
        }
        "filter" => {
            r#"import sluice


class Udf(sluice.Filter):
    def keep(self, record):
        return record.value_json()["amount"] >= 10


StatelessOperator = sluice.export_filter(Udf)
"#
        }
        "flat-map" => {
            r#"import re

import sluice


class Udf(sluice.FlatMap):
    def flat_map(self, record, out):
        for word in re.split(r"[^A-Za-z0-9]+", record.value_str()):
            if word:
                word = word.lower()
                out.emit_json(word, {"word": word}, record.timestamp)


StatelessOperator = sluice.export_flat_map(Udf)
"#
        }
        _ => {
            r#"import sluice


class Udf(sluice.KeyedProcess):
    def __init__(self, config):
        super().__init__(config)
        # Purchases of the record's user: host-owned keyed state, in checkpoints.
        self.count = sluice.ValueState("count")

    def process(self, record, out):
        n = self.count.get(0) + 1
        self.count.set(n)
        out.emit_json(record.key, {"user": record.key.decode(), "count": n}, record.timestamp)


KeyedOperator = sluice.export_keyed_process(Udf)
"#
        }
    };
    format!("\"\"\"{}\"\"\"\n\n{body}", behaviour_doc(kind))
}

fn js_source(kind: &str) -> String {
    let body = match kind {
        "map" => {
            r#"import { Map, exportMap } from './sluice.js';

class Udf extends Map {
  map(record) {
    const purchase = record.valueJson();
    purchase.large = (purchase.amount ?? 0) >= 10;
    return [record.key, JSON.stringify(purchase), record.timestamp];
  }
}

export const statelessOperator = exportMap(Udf);
"#
        }
        "filter" => {
            r#"import { Filter, exportFilter } from './sluice.js';

class Udf extends Filter {
  keep(record) {
    return record.valueJson().amount >= 10;
  }
}

export const statelessOperator = exportFilter(Udf);
"#
        }
        "flat-map" => {
            r#"import { FlatMap, exportFlatMap } from './sluice.js';

class Udf extends FlatMap {
  flatMap(record, out) {
    for (const w of record.valueStr().split(/[^A-Za-z0-9]+/)) {
      if (w) {
        const word = w.toLowerCase();
        out.emitJson(word, { word }, record.timestamp);
      }
    }
  }
}

export const statelessOperator = exportFlatMap(Udf);
"#
        }
        _ => {
            r#"import { KeyedProcess, ValueState, exportKeyedProcess } from './sluice-keyed.js';

class Udf extends KeyedProcess {
  constructor(config) {
    super(config);
    // Purchases of the record's user: host-owned keyed state, in checkpoints.
    this.count = new ValueState('count');
  }

  process(record, out) {
    const n = this.count.get(0) + 1;
    this.count.set(n);
    out.emitJson(record.key, { user: record.keyStr(), count: n }, record.timestamp);
  }
}

export const keyedOperator = exportKeyedProcess(Udf);
"#
        }
    };
    format!("// {}\n{body}", behaviour_doc(kind))
}

fn js_package(name: &str, kind: &str) -> Result<String> {
    let shipped: serde_json::Value = serde_json::from_str(JS_PACKAGE).context("the built-in guest-js/package.json")?;
    let build = format!(
        "componentize-js app.js --wit wit --world-name {} --disable http fetch-event -o {name}.wasm",
        world(kind)
    );
    let package = serde_json::json!({
        "name": name,
        "private": true,
        "type": "module",
        "scripts": { "build": build },
        "devDependencies": shipped["dependencies"],
    });
    Ok(serde_json::to_string_pretty(&package)? + "\n")
}

fn c_source(kind: &str) -> String {
    let body = if kind == "flat-map" {
        r#"#include "stateless.h"
#include "sluice.h"

static sluice_buf word, json;

static bool is_word_byte(uint8_t c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static void split(const sluice_record *r, sluice_out *out) {
    const int64_t *ts = r->has_timestamp ? &r->timestamp : NULL;
    word.len = 0;
    for (size_t i = 0; i <= r->value_len; i++) {
        uint8_t c = i < r->value_len ? r->value[i] : ' ';
        if (is_word_byte(c)) {
            sluice_buf_byte(&word, (c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c);
        } else if (word.len) {
            json.len = 0;
            sluice_buf_str(&json, "{\"word\":");
            sluice_buf_json_string(&json, word.ptr, word.len);
            sluice_buf_byte(&json, '}');
            sluice_emit(out, word.ptr, word.len, ts, json.ptr, json.len);
            word.len = 0;
        }
    }
}

SLUICE_EXPORT_STATELESS(sluice_open_any, split)
"#
    } else {
        r#"#include "keyed_process.h"
#include "sluice.h"

/* Purchases of the record's user: host-owned keyed state, in checkpoints. */
static sluice_state count;
static sluice_buf json;

static const char *open_udf(const char *config, size_t len) {
    (void)config;
    (void)len;
    return sluice_state_declare("count", &count) ? NULL : "cannot declare state `count`";
}

static void process(uint32_t input, const sluice_record *r, sluice_out *out) {
    (void)input;
    bool ok;
    int64_t n = sluice_value_get_i64(count, 0, &ok) + 1;
    if (!ok || !sluice_value_put_i64(count, n)) {
        sluice_fail(out, "state access failed (see the job's log)");
        return;
    }
    json.len = 0;
    sluice_buf_str(&json, "{\"user\":");
    sluice_buf_json_string(&json, r->key, r->key_len);
    sluice_buf_str(&json, ",\"count\":");
    sluice_buf_i64(&json, n);
    sluice_buf_byte(&json, '}');
    sluice_emit_like(out, r, json.ptr, json.len);
}

SLUICE_EXPORT_KEYED_PROCESS(open_udf, process, sluice_no_timers)
"#
    };
    format!("/* {} */\n{body}", behaviour_doc(kind))
}

fn c_build(name: &str, kind: &str) -> String {
    let world = world(kind);
    let stem = world.replace('-', "_");
    format!(
        "#!/bin/sh\n# Builds {name}.wasm: the world's C bindings (`sluice c-bindings`), clang for\n\
         # wasm32-wasi, then `sluice componentize` (the WASI preview 1 adapter).\n\
         set -e\ncd \"$(dirname \"$0\")\"\nSLUICE=${{SLUICE:-sluice}}\n\
         \"$SLUICE\" c-bindings --world {world} --out-dir bindings >/dev/null\n\
         clang --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wextra -Werror -I . -I bindings \\\n  \
         {name}.c bindings/{stem}.c bindings/{stem}_component_type.o -o {name}.core.wasm\n\
         \"$SLUICE\" componentize {name}.core.wasm -o {name}.wasm\n"
    )
}
