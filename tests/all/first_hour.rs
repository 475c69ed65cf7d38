//! A Flink user's first hour: UDF projects made by `sluice new` outside the
//! repository, built with their documented command and run; the plan view
//! in its three formats; errors that name the fix; the CLI against a real
//! server.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{root, sluice_bin, temp_dir, udf};
use crate::server::{TestServer, wait_for};

/// Run `sluice ARGS` in `dir`; (success, stdout, stderr).
fn sluice_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut c = Command::new(sluice_bin());
    c.args(args).current_dir(dir);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("running sluice");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run a shell command in `dir`, failing the test with its output.
fn shell(dir: &Path, command: &str, env: &[(&str, String)]) {
    let mut c = Command::new("sh");
    c.args(["-c", command]).current_dir(dir);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("running sh");
    assert!(
        out.status.success(),
        "`{command}` in {} failed:\n{}\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Lines as sorted canonical JSON, to compare outputs as multisets.
fn canonical(values: impl IntoIterator<Item = Value>) -> Vec<String> {
    let mut v: Vec<String> = values.into_iter().map(|x| x.to_string()).collect();
    v.sort();
    v
}

/// The number in `v` as f64, so that `12` and `12.0` compare equal.
fn normalize(v: Value) -> Value {
    match v {
        Value::Number(n) => json!(n.as_f64().unwrap_or(f64::NAN)),
        Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (k, normalize(v))).collect()),
        other => other,
    }
}

/// What a project of `kind` must write for its sample input, computed here
/// from the input file, not by the engine.
fn expected(kind: &str, project: &Path) -> Vec<String> {
    if kind == "flat-map" {
        let text = std::fs::read_to_string(project.join("input.txt")).unwrap();
        let words = text
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(|w| json!({ "word": w.to_ascii_lowercase() }));
        return canonical(words.map(normalize));
    }
    let purchases: Vec<Value> = std::fs::read_to_string(project.join("input.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let amount = |p: &Value| p["amount"].as_f64().unwrap();
    let user = |p: &Value| p["user"].as_str().unwrap().to_owned();
    let out: Vec<Value> = match kind {
        "map" => purchases
            .iter()
            .map(|p| {
                let mut p = p.clone();
                p["large"] = json!(amount(&p) >= 10.0);
                p
            })
            .collect(),
        "filter" => purchases.iter().filter(|p| amount(p) >= 10.0).cloned().collect(),
        "keyed-process" => {
            let mut counts: HashMap<String, u64> = HashMap::new();
            purchases
                .iter()
                .map(|p| {
                    let n = counts.entry(user(p)).or_default();
                    *n += 1;
                    json!({ "user": user(p), "count": *n })
                })
                .collect()
        }
        "window-aggregate" => {
            let mut sums: BTreeMap<(String, i64), f64> = BTreeMap::new();
            for p in &purchases {
                let start = p["ts"].as_i64().unwrap().div_euclid(10_000) * 10_000;
                *sums.entry((user(p), start)).or_default() += amount(p);
            }
            sums.into_iter()
                .map(|((u, s), sum)| json!({ "user": u, "start": s, "end": s + 10_000, "sum": sum }))
                .collect()
        }
        other => panic!("no expectation for kind {other}"),
    };
    canonical(out.into_iter().map(normalize))
}

/// A directory outside the repository for `sluice new` projects.
fn outside_repo(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sluice-new-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    assert!(!d.starts_with(root()), "{} is inside the repository", d.display());
    d
}

/// Create, build (with the README's command) and run a project of every
/// kind `lang` offers; each output must equal the expectation.
fn new_projects_in(lang: &str, kinds: &[&str], build: &str, env: &[(&str, String)]) {
    let base = outside_repo(lang);
    // The kinds a language does not offer are refused with the list.
    let (ok, _, err) = sluice_in(&base, &["new", "nope", "--lang", lang, "--kind", "join"], &[]);
    assert!(!ok && err.contains("offers the kinds") && err.contains(&kinds.join(", ")), "{err}");
    for kind in kinds {
        let name = format!("my-{kind}");
        let (ok, out, err) = sluice_in(&base, &["new", &name, "--lang", lang, "--kind", kind], &[]);
        assert!(ok, "sluice new {name}: {err}");
        assert!(out.contains("job.toml"), "{out}");
        let project = base.join(&name);
        let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
        let command = build.replace("{name}", &name);
        assert!(
            readme.contains(command.lines().last().unwrap_or_default()),
            "the README documents the build command `{command}`:\n{readme}"
        );
        if lang == "rust" {
            // One target directory for all projects (a symlink), so the
            // SDK's dependencies compile once.
            std::fs::create_dir_all(base.join("shared-target")).unwrap();
            std::os::unix::fs::symlink(base.join("shared-target"), project.join("target")).unwrap();
        }
        shell(&project, &command, env);
        let (ok, _, err) = sluice_in(&project, &["check", "job.toml"], &[]);
        assert!(ok, "sluice check in {name}: {err}");
        let (ok, _, err) = sluice_in(&project, &["run", "job.toml", "--quiet"], &[]);
        assert!(ok, "sluice run in {name}: {err}");
        let got: Vec<Value> = std::fs::read_to_string(project.join("out.jsonl"))
            .unwrap()
            .lines()
            .map(|l| normalize(serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}: bad line {l:?}: {e}"))))
            .collect();
        assert_eq!(canonical(got), expected(kind, &project), "{lang} {kind}");
    }
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn sluice_new_rust_projects_build_with_cargo_and_run() {
    let kinds = ["map", "filter", "flat-map", "keyed-process", "window-aggregate"];
    new_projects_in("rust", &kinds, "cargo build --release", &[]);
}

#[test]
fn sluice_new_python_projects_build_with_componentize_py_and_run() {
    new_projects_in("python", &["map", "filter", "flat-map", "keyed-process"], "./build.sh", &[]);
}

#[test]
fn sluice_new_javascript_projects_build_with_npm_and_run() {
    // The npm cache scripts/build-guests filled makes `npm install` quick.
    let env = [("npm_config_prefer_offline", "true".to_owned())];
    new_projects_in(
        "js",
        &["map", "filter", "flat-map", "keyed-process"],
        "npm install --no-audit --no-fund --loglevel=error\nnpm run build",
        &env,
    );
}

#[test]
fn sluice_new_c_projects_build_with_clang_and_run() {
    let env = [("SLUICE", sluice_bin().display().to_string())];
    new_projects_in("c", &["flat-map", "keyed-process"], "./build.sh", &env);
}

#[test]
fn sluice_plan_shows_tasks_partitioners_and_chains_in_three_formats() {
    let examples = root().join("examples");
    let plan = |file: &str, format: &str| {
        let (ok, out, err) = sluice_in(&examples, &["plan", file, "--format", format], &[]);
        assert!(ok, "sluice plan {file}: {err}");
        out
    };
    // The word count: lines -> tokenize (rebalance: 1 -> 2) -> count (hash,
    // defaulted into a keyed operator) -> out.
    let text = plan("wordcount.toml", "text");
    for line in [
        "job `wordcount`: 4 nodes in 4 tasks (6 subtasks), max parallelism 128",
        "  task 1  parallelism 2",
        "    tokenize (flat-map operator): tokenize.wasm",
        "count -> out",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    let json: Value = serde_json::from_str(&plan("wordcount.toml", "json")).unwrap();
    let edges = json["edges"].as_array().unwrap();
    let edge = |from: &str| edges.iter().find(|e| e["from"] == from).unwrap();
    assert_eq!(edge("count")["partition"], "rebalance", "{json}");
    assert_eq!(edge("count")["defaulted"], "parallelism 2 -> 1", "{json}");
    assert_eq!(edge("count")["chained"], false);
    assert_eq!(json["tasks"].as_array().unwrap().len(), 4);
    let dot = plan("wordcount.toml", "dot");
    assert!(dot.starts_with("digraph \"wordcount\" {"), "{dot}");
    assert_eq!(dot.matches("subgraph cluster_task").count(), 4, "{dot}");
    assert_eq!(dot.matches(" -> ").count(), 3, "{dot}");
    assert!(
        dot.contains("\"count\" -> \"out\" [label=\"rebalance (default)\", style=dashed];"),
        "{dot}"
    );
    // Every example's plan: tasks cover every node once, every edge is
    // chained exactly when both ends share a task.
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let file = path.file_name().unwrap().to_str().unwrap().to_owned();
        let v: Value = serde_json::from_str(&plan(&file, "json")).unwrap();
        let nodes = v["nodes"].as_array().unwrap();
        let mut in_tasks: Vec<&str> = v["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|t| t["nodes"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()))
            .collect();
        in_tasks.sort();
        let mut names: Vec<&str> = nodes.iter().map(|n| n["name"].as_str().unwrap()).collect();
        names.sort();
        assert_eq!(in_tasks, names, "{file}");
        let task_of = |n: &Value| nodes.iter().find(|x| x["name"] == *n).unwrap()["task"].clone();
        for e in v["edges"].as_array().unwrap() {
            if e["feedback"].is_string() {
                // An iteration's feedback edge: a task back to itself, across channels.
                assert!(e["chained"] == false && e["from"] == e["to"], "{file}: {e}");
                continue;
            }
            assert_eq!(e["chained"] == true, task_of(&e["from"]) == task_of(&e["to"]), "{file}: {e}");
        }
        let text = plan(&file, "text");
        assert_eq!(
            text.lines().filter(|l| l.starts_with("  task ")).count(),
            v["tasks"].as_array().unwrap().len()
        );
        assert!(plan(&file, "dot").ends_with("}\n"));
    }
}

/// `sluice check` of `spec` (TOML) written into a temp dir: (ok, stderr).
fn check(name: &str, spec: &str) -> (bool, String) {
    let dir = temp_dir(name);
    std::fs::write(dir.join("job.toml"), spec).unwrap();
    let (ok, _, err) = sluice_in(&dir, &["check", "job.toml"], &[]);
    (ok, err)
}

fn one_operator(kind: &str, component: &Path, source: &str) -> String {
    format!(
        "name = \"j\"\n[[sources]]\nname = \"in\"\nkind = \"file\"\npath = \"in.txt\"\n{source}\n\
         [[operators]]\nname = \"op\"\nkind = \"{kind}\"\ncomponent = {component:?}\n\
         [[sinks]]\nname = \"out\"\nkind = \"stdout\"\n\
         [[edges]]\nfrom = \"in\"\nto = \"op\"\n[[edges]]\nfrom = \"op\"\nto = \"out\"\n",
        component = component.display().to_string()
    )
}

#[test]
fn errors_name_the_fix() {
    let keyed_source = "format = \"json\"\nkey_field = \"k\"";
    // The wrong world: the world names `sluice inspect` shows, the kinds the
    // component fits, how to rebuild it.
    let (ok, err) = check("err-world", &one_operator("keyed-process", &udf("tokenize"), keyed_source));
    assert!(!ok);
    let (_, inspect, _) = sluice_in(&root(), &["inspect", udf("tokenize").to_str().unwrap()], &[]);
    assert!(inspect.contains("world: sluice:udf/stateless@0.1.0"), "{inspect}");
    for hint in [
        "operator `op` is a keyed-process and needs a component of world `keyed-process` (sluice:udf/keyed-process@0.1.0)",
        "targets world `stateless` (sluice:udf/stateless@0.1.0), which fits kind = \"map\", kind = \"filter\" or kind = \"flat-map\"",
        "Rebuild it for `keyed-process`",
        "`export_keyed_process!`",
        "componentize-py … -w keyed-process",
        "--world-name keyed-process",
        "sluice c-bindings --world keyed-process",
    ] {
        assert!(err.contains(hint), "missing {hint:?} in {err}");
    }
    // An rlib, a native binary and a core module given as components.
    let dir = temp_dir("err-files");
    let files: [(&str, &[u8], &str); 3] = [
        (
            "lib.rlib",
            b"!<arch>\n/               0           0     0     0       8         `\n",
            "crate-type = [\"cdylib\"]",
        ),
        (
            "native.so",
            b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0",
            "native executable or library",
        ),
        ("core.wasm", b"\0asm\x01\0\0\0", "a core WebAssembly module, not a component"),
    ];
    for (file, bytes, hint) in files {
        let path = dir.join(file);
        std::fs::write(&path, bytes).unwrap();
        let (ok, err) = check("err-file", &one_operator("map", &path, ""));
        assert!(!ok);
        assert!(err.contains(hint), "{file}: missing {hint:?} in {err}");
        assert_eq!(err.matches("not a WebAssembly component").count().max(1), 1, "said once: {err}");
    }
    // A keyed operator whose input cannot carry keys: a static check.
    let (ok, err) = check("err-keys", &one_operator("keyed-process", &udf("count"), "format = \"json\""));
    assert!(!ok);
    assert!(
        err.contains("`op`: a keyed operator needs records with keys, but source `in` gives its records no key: set `key_field` on it"),
        "{err}"
    );
    let (ok, err) = check("err-keys-lines", &one_operator("keyed-process", &udf("count"), ""));
    assert!(!ok && err.contains("reads plain lines, which have no key"), "{err}");
    // Event time that cannot advance: a warning, the job is still valid.
    let windowed = "name = \"w\"\n[[sources]]\nname = \"in\"\nkind = \"file\"\npath = \"in.csv\"\nformat = \"csv\"\ncolumns = [\"ts\", \"word\"]\n\
         key_field = \"word\"\ntimestamp_field = \"ts\"\n\
         [[operators]]\nname = \"counts\"\nkind = \"window\"\nwindow = { assigner = \"tumbling\", size_ms = 1000, aggregate = \"count\" }\n\
         [[sinks]]\nname = \"out\"\nkind = \"stdout\"\n[[edges]]\nfrom = \"in\"\nto = \"counts\"\n[[edges]]\nfrom = \"counts\"\nto = \"out\"\n";
    let (ok, err) = check("warn-wm", windowed);
    assert!(ok, "{err}");
    assert!(
        err.contains("warning: no watermarks reach `counts`, which uses event-time windows: source `in` generates none"),
        "{err}"
    );
    // A keyed process: warned about only when its records have event times.
    let keyed = one_operator("keyed-process", &udf("count"), "format = \"json\"\nkey_field = \"k\"");
    let (ok, err) = check("warn-keyed-none", &keyed);
    assert!(ok && !err.contains("warning"), "{err}");
    let timed = keyed.replace("key_field = \"k\"", "key_field = \"k\"\ntimestamp_field = \"ts\"");
    let (ok, err) = check("warn-keyed", &timed);
    assert!(ok, "{err}");
    assert!(
        err.contains("warning: no watermarks reach `op`: source `in` generates none, so if it registers event-time timers they fire only when the input ends"),
        "{err}"
    );
    let with_watermarks = windowed.replace(
        "timestamp_field = \"ts\"\n",
        "timestamp_field = \"ts\"\nwatermarks = { strategy = \"monotonous\" }\n",
    );
    let (ok, err) = check("warn-wm-none", &with_watermarks);
    assert!(ok && !err.contains("warning"), "{err}");
}

#[test]
fn the_cli_covers_jobs_plans_logs_checkpoints_savepoints_stop_and_restore() {
    let server = TestServer::start("cli-first-hour", &[("acme", "")]);
    let dir = temp_dir("cli-first-hour-spec");
    let cli = |args: &[&str]| {
        let (ok, out, err) = sluice_in(&dir, args, &[("SLUICE_SERVER", &server.addr), ("SLUICE_TOKEN", "acme-token")]);
        assert!(ok, "sluice {args:?}: {out}\n{err}");
        (out, err)
    };
    assert_eq!(cli(&["jobs"]).0, "no jobs\n");
    let words = root().join("examples/data/wordcount.txt");
    let (put, _) = cli(&["put", words.to_str().unwrap(), "in/words.txt"]);
    let size = std::fs::metadata(&words).unwrap().len();
    assert_eq!(put.trim(), format!("stored {} ({size} bytes) at in/words.txt", words.display()));
    let spec = format!(
        "name = \"cli\"\n[checkpoints]\ninterval_ms = 100\n\
         [[sources]]\nname = \"lines\"\nkind = \"file\"\npath = \"in/words.txt\"\nrecords_per_second = 400\n\
         [[operators]]\nname = \"tokenize\"\nkind = \"flat-map\"\ncomponent = {tok:?}\nparallelism = 2\n\
         [[operators]]\nname = \"count\"\nkind = \"keyed-process\"\ncomponent = {count:?}\nparallelism = 2\n\
         [[sinks]]\nname = \"out\"\nkind = \"file\"\npath = \"out/cli\"\n\
         [[edges]]\nfrom = \"lines\"\nto = \"tokenize\"\n[[edges]]\nfrom = \"tokenize\"\nto = \"count\"\n\
         [[edges]]\nfrom = \"count\"\nto = \"out\"\n",
        tok = udf("tokenize").display().to_string(),
        count = udf("count").display().to_string()
    );
    std::fs::write(dir.join("job.toml"), &spec).unwrap();
    let id = cli(&["submit", "job.toml"]).0.trim().to_owned();
    let c = server.client("acme");
    wait_for(&c, &id, &["running"], Duration::from_secs(30));
    // `jobs`: a table with a header, start time and duration.
    let (list, _) = cli(&["jobs"]);
    let mut lines = list.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("ID") && header.contains("STATE") && header.contains("STARTED") && header.contains("DURATION"),
        "{list}"
    );
    let row = lines.next().unwrap();
    assert!(row.starts_with(&id) && row.contains("running") && row.contains(" UTC"), "{list}");
    // The plan of the server's job equals the plan of the spec file, minus
    // the paths the server rewrote.
    let (plan, _) = cli(&["plan", &id, "--format", "json"]);
    let plan: Value = serde_json::from_str(&plan).unwrap();
    assert_eq!(plan["tasks"].as_array().unwrap().len(), 4, "{plan}");
    assert_eq!(plan["edges"][1]["partition"], "hash");
    assert_eq!(plan["edges"][1]["defaulted"], "the input of a keyed operator");
    // Let a checkpoint complete, then read the job as a table.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while c.get(&format!("/v1/jobs/{id}")).unwrap().json()["checkpoints"]["completed"]
        .as_u64()
        .unwrap_or(0)
        < 1
    {
        assert!(std::time::Instant::now() < deadline, "no checkpoint completed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (details, _) = cli(&["jobs", &id, "--subtasks"]);
    assert!(details.starts_with(&format!("job {id} `cli`: running, started ")), "{details}");
    assert!(details.contains("checkpoints: ") && details.contains(" completed, "), "{details}");
    let header = details.lines().find(|l| l.starts_with("OPERATOR")).unwrap();
    for column in ["PAR", "IN RATE", "BUSY", "BACKPRESSURED", "WATERMARK", "EVENT LAG", "WALL LAG"] {
        assert!(header.contains(column), "{header}");
    }
    assert!(details.lines().any(|l| l.starts_with("count ")), "{details}");
    assert_eq!(
        details.lines().filter(|l| l.starts_with("  [")).count(),
        1 + 2 + 2 + 1,
        "a row per subtask:\n{details}"
    );
    let (json_out, _) = cli(&["jobs", &id, "--output", "json"]);
    assert_eq!(serde_json::from_str::<Value>(&json_out).unwrap()["id"], id.as_str());
    let (checkpoints, _) = cli(&["checkpoints", &id]);
    assert!(checkpoints.starts_with("ID") && checkpoints.lines().count() >= 2, "{checkpoints}");
    // A savepoint, then more checkpoints: the sink commits files after it,
    // which a restore from it rolls back.
    let (early, _) = cli(&["savepoint", &id]);
    let early = early.trim().to_owned();
    assert!(early.starts_with(&format!("{id}/savepoint-")), "{early}");
    let completed = |c: &sluice::api::Client| {
        c.get(&format!("/v1/jobs/{id}")).unwrap().json()["checkpoints"]["completed"]
            .as_u64()
            .unwrap_or(0)
    };
    let after = completed(&c) + 2;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while completed(&c) < after {
        assert!(std::time::Instant::now() < deadline, "no checkpoints after the savepoint");
        std::thread::sleep(Duration::from_millis(100));
    }
    // `stop`: a savepoint, listed by `savepoints`.
    let (sp, err) = cli(&["stop", &id]);
    let sp = sp.trim().to_owned();
    assert!(sp.starts_with(&format!("{id}/savepoint-")), "{sp}");
    assert!(err.contains(&format!("job {id} stopped with savepoint {sp}")), "{err}");
    wait_for(&c, &id, &["finished", "canceled"], Duration::from_secs(30));
    let (savepoints, _) = cli(&["savepoints", &id]);
    assert!(savepoints.lines().any(|l| l.ends_with(&sp)), "{savepoints}");
    assert!(savepoints.lines().any(|l| l.ends_with(&early)), "{savepoints}");
    // `submit --savepoint` reports what the restore did: the state it
    // restored and the sink's files it rolled back.
    let (restored, err) = cli(&["submit", "job.toml", "--savepoint", &early]);
    let id2 = restored.trim().to_owned();
    assert!(err.contains("restored savepoint-"), "{err}");
    assert!(err.contains("(savepoint, checkpoint "), "{err}");
    assert!(
        err.contains("out[0]: rolled back ") && err.contains("committed after the restored checkpoint"),
        "{err}"
    );
    assert!(err.contains("part-"), "the rolled-back files are named: {err}");
    // `logs` shows the host's line about the restore.
    let (logs, _) = cli(&["logs", &id2]);
    assert!(logs.contains("INFO  cli[0] restored savepoint-"), "{logs}");
    cli(&["cancel", &id2]);
    wait_for(&c, &id2, &["canceled", "finished"], Duration::from_secs(30));
    // `logs -f` of an ended job prints its lines and returns.
    let (followed, err) = cli(&["logs", &id2, "-f"]);
    assert!(
        followed.contains("restored savepoint-") && err.contains(&format!("job {id2} ")),
        "{followed}\n{err}"
    );
}
