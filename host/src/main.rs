//! The `sluice` command line.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use sluice::cluster::{Restore, RunOptions, run_job};
use sluice::job::JobGraph;
use sluice::wasm::WasmEngine;

mod remote;
mod scaffold;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "A stream processing engine whose operators are WebAssembly components"
)]
struct Cli {
    /// Where compiled components are cached (default: $SLUICE_CACHE_DIR, or ~/.cache/sluice/components).
    #[arg(long, global = true)]
    cache_dir: Option<PathBuf>,
    /// The server client commands talk to.
    #[arg(long, global = true, env = "SLUICE_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a job in-process until its bounded sources end.
    Run {
        /// The job spec (TOML, or JSON with a .json extension).
        job: PathBuf,
        /// Do not print progress to stderr.
        #[arg(long)]
        quiet: bool,
        /// Resume from `latest` (the newest complete checkpoint in the job's
        /// checkpoint directory) or from a checkpoint or savepoint directory.
        #[arg(long, value_name = "latest|PATH")]
        restore: Option<String>,
        /// Restore even if the checkpoint has state of operators the job no
        /// longer has (that state is dropped).
        #[arg(long)]
        allow_non_restored_state: bool,
    },
    /// Take a savepoint of a running job and print its path: of a local job
    /// (found by its spec's checkpoint directory), or of a server's job (by
    /// id, with `--server` and $SLUICE_TOKEN).
    Savepoint {
        /// The job spec file of a local job, or a server job's id.
        job: String,
        /// Stop the job once the savepoint is complete.
        #[arg(long)]
        stop: bool,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout_s: u64,
    },
    /// Run the HTTP API server (tenants, components, jobs, savepoints,
    /// metrics) until Ctrl-C or SIGTERM.
    Serve {
        /// The server's config file (listen address, data directory, tenants).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a JobManager of a standalone cluster: the HTTP API of `serve`
    /// plus the control RPC that TaskManagers register with (`[cluster]` in
    /// the config). Prints `http://HOST:PORT` and `rpc HOST:PORT` once ready.
    Jobmanager {
        /// The config file (the format of `serve`, plus `[cluster]`).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a TaskManager: offer task slots to a JobManager and run the
    /// tasks it deploys. Prints `data HOST:PORT`, then `registered as ID`.
    Taskmanager {
        /// The JobManager's RPC address (`rpc HOST:PORT` of `sluice jobmanager`);
        /// with HA, every JobManager's, comma-separated (the leader accepts).
        #[arg(long)]
        jobmanager: String,
        /// Task slots to offer (a job needs as many as its highest parallelism).
        #[arg(long, default_value_t = 1)]
        slots: u32,
        /// Where the data plane listens for other TaskManagers.
        #[arg(long, default_value = "127.0.0.1:0")]
        data_addr: std::net::SocketAddr,
        /// Credits each channel gets from its receiver (exclusive buffers).
        #[arg(long, default_value_t = 2)]
        exclusive_credits: u32,
        /// Extra credits per input gate, handed to channels with a backlog.
        #[arg(long, default_value_t = 8)]
        floating_credits: u32,
        /// A channel's buffer is sent when it holds this many bytes, ...
        #[arg(long, default_value_t = 32 * 1024)]
        buffer_bytes: usize,
        /// ... or after this many ms (a barrier or watermark flushes at once).
        #[arg(long, default_value_t = 100)]
        buffer_timeout_ms: u64,
    },
    /// Print the SHA-256 of a bearer token, for a tenant's `token_sha256`.
    HashToken {
        /// The token.
        token: String,
    },
    /// Upload a component to the server; prints its digest.
    Upload {
        /// The component file.
        component: PathBuf,
    },
    /// Upload a local file into your tenant's file area on the server (job input).
    Put {
        /// The local file.
        local: PathBuf,
        /// Its path in the file area.
        path: String,
    },
    /// Print a file of your tenant's file area (a directory: its files concatenated).
    Get {
        /// The path in the file area.
        path: String,
    },
    /// Submit a job spec to the server (local component files are uploaded
    /// first); prints the job id.
    Submit {
        /// The job spec (TOML, or JSON with a .json extension).
        job: PathBuf,
        /// Start from a savepoint (`<job id>/savepoint-<n>`).
        #[arg(long)]
        savepoint: Option<String>,
        /// Restore even if the savepoint has state of operators the job no longer has.
        #[arg(long)]
        allow_non_restored_state: bool,
        /// Wait for the job to end; fail unless it finishes.
        #[arg(long)]
        wait: bool,
    },
    /// List the server's jobs of your tenant (a table), or show one:
    /// state, checkpoints, and per operator records, rates,
    /// busy/backpressured time, watermark and lag.
    Jobs {
        /// A job id.
        id: Option<String>,
        /// With a job id: a row per subtask under each operator (key skew shows here).
        #[arg(long)]
        subtasks: bool,
        /// `table`, or `json` (the API's answer).
        #[arg(long, value_enum, default_value = "table")]
        output: remote::Output,
    },
    /// Show a job's plan (Flink's `flink info`): nodes, parallelism, the
    /// partitioner of every edge (and why, when defaulted), chains into tasks.
    Plan {
        /// A job spec file, or the id of a server's job.
        job: String,
        /// `text`, `json`, or `dot` (Graphviz: `sluice plan JOB --format dot | dot -Tsvg`).
        #[arg(long, value_enum, default_value = "text")]
        format: PlanFormat,
    },
    /// Print a server job's log: its guests' lines and the host's about it
    /// (restores, warnings).
    Logs {
        /// The job id.
        id: String,
        /// Keep printing new lines until the job ends.
        #[arg(short, long)]
        follow: bool,
        /// How many of the newest lines to print first.
        #[arg(long, default_value_t = 100)]
        tail: usize,
    },
    /// List a server job's retained checkpoints.
    Checkpoints {
        /// The job id.
        id: String,
        /// `table` or `json`.
        #[arg(long, value_enum, default_value = "table")]
        output: remote::Output,
    },
    /// List a server job's savepoints (ids for `submit --savepoint`).
    Savepoints {
        /// The job id.
        id: String,
        /// `table` or `json`.
        #[arg(long, value_enum, default_value = "table")]
        output: remote::Output,
    },
    /// Stop a server's job with a savepoint (Flink's `flink stop`); prints the savepoint id.
    Stop {
        /// The job id.
        id: String,
    },
    /// List a JobManager's TaskManagers: id, data address, free/total slots, tasks.
    Taskmanagers,
    /// Cancel a job on the server.
    Cancel {
        /// The job id.
        id: String,
    },
    /// Create a UDF project outside this repository: the UDF, its build
    /// (one command, in the project's README), a job spec and sample input
    /// that `sluice run job.toml` runs.
    New {
        /// The project's directory; its last part names the UDF.
        dir: PathBuf,
        /// rust | python | js | c
        #[arg(long, default_value = "rust")]
        lang: String,
        /// map | filter | flat-map | keyed-process | window-aggregate (what each language offers: see the error)
        #[arg(long, default_value = "map")]
        kind: String,
        /// Rust: the guest SDK's directory (default: the checkout this binary was built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Validate a job spec and its components without running it.
    Check {
        /// The job spec.
        job: PathBuf,
    },
    /// Print the world a component targets and what it imports and exports.
    Inspect {
        /// The component file.
        component: PathBuf,
    },
    /// Run a benchmark and print one line of figures, beside a native baseline.
    Bench {
        /// map | keyed-count | window-count | checkpoint | shuffle | kafka | e2e | batch | nexmark
        name: String,
        /// nexmark: the query (q0, q1, q2, …).
        #[arg(long)]
        query: Option<String>,
        /// Records to process (default: 5,000,000 for map, 3,000,000 for keyed-count).
        #[arg(long)]
        events: Option<u64>,
        /// Directory of the built UDF components.
        #[arg(long, default_value = "udfs/target/wasm32-wasip2/release")]
        udfs: PathBuf,
        /// The language of the UDFs: rust (from `--udfs`), or python, js or c
        /// (from target/guests/<lang>, built by scripts/build-guests).
        #[arg(long, default_value = "rust")]
        lang: String,
        /// Run the benchmark twice: alone, then while a keyed count in this
        /// language (rust, python, js or c) runs without pause on another
        /// thread, to show that one guest's slowness does not slow another
        /// job (compare `events_per_wall_s` of the two lines).
        #[arg(long)]
        alongside: Option<String>,
        /// nexmark, e2e and batch: run the job and the baseline this many times
        /// each, alternately, and report the best of each (CPU time on a
        /// shared machine is noisy).
        #[arg(long, default_value_t = 3)]
        runs: u32,
    },
    /// Write the C bindings of a Sluice world (`wit-bindgen c` over the
    /// built-in WIT package): <world>.h, <world>.c, <world>_component_type.o.
    CBindings {
        /// stateless | keyed-process | window-aggregate | window-process | punctuated-watermarks
        #[arg(long)]
        world: String,
        /// Where to write them.
        #[arg(long)]
        out_dir: PathBuf,
    },
    /// Turn a core module built for wasm32-wasi (C, with the bindings of
    /// `c-bindings` linked in) into a UDF component, adapting WASI preview 1
    /// (as `wasm-tools component new --adapt`).
    Componentize {
        /// The core module.
        module: PathBuf,
        /// The component to write.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// (Internal) compile one component under memory and CPU limits: the
    /// server's isolated compiler process.
    #[command(hide = true)]
    CompileComponent {
        input: PathBuf,
        output: PathBuf,
        #[arg(long)]
        fuel: bool,
        #[arg(long)]
        max_memory: u64,
        #[arg(long)]
        max_cpu_secs: u64,
    },
}

/// Formats of `sluice plan`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum PlanFormat {
    Text,
    Json,
    Dot,
}

fn cache_dir(flag: Option<PathBuf>) -> Option<PathBuf> {
    flag.or_else(|| std::env::var_os("SLUICE_CACHE_DIR").map(PathBuf::from))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/sluice/components")))
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: a file or a pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {}", error_chain(&e));
        std::process::exit(1);
    }
}

/// An error and its causes on one line, each cause once: errors that
/// already print their source (`thiserror`'s `{source}`) are not followed
/// by it again.
fn error_chain(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let engine = || WasmEngine::new(cache_dir(cli.cache_dir.clone()));
    match cli.command {
        Command::Serve { config } => remote::serve(&config),
        Command::Jobmanager { config } => remote::jobmanager(&config),
        Command::Taskmanager {
            jobmanager,
            slots,
            data_addr,
            exclusive_credits,
            floating_credits,
            buffer_bytes,
            buffer_timeout_ms,
        } => {
            let network = sluice::runtime::network::NetworkConfig {
                exclusive_credits: exclusive_credits.max(1),
                floating_credits,
                buffer_bytes: buffer_bytes.max(1),
                buffer_timeout: Duration::from_millis(buffer_timeout_ms.max(1)),
                ..Default::default()
            };
            let cache = cache_dir(cli.cache_dir.clone());
            sluice::cluster::taskmanager::run(
                sluice::cluster::taskmanager::TaskManagerOptions {
                    jobmanager,
                    slots,
                    data_addr,
                    cache_dir: cache,
                    network,
                },
                engine()?,
            )
        }
        Command::CompileComponent {
            input,
            output,
            fuel,
            max_memory,
            max_cpu_secs,
        } => sluice::wasm::compile::compile_child_main(&input, &output, fuel, max_memory, max_cpu_secs).map_err(anyhow::Error::msg),
        Command::HashToken { token } => {
            println!("{}", sluice::tenancy::token_hash(&token));
            Ok(())
        }
        Command::Upload { component } => {
            println!("{}", remote::upload(&remote::client(&cli.server)?, &component)?);
            Ok(())
        }
        Command::Submit {
            job,
            savepoint,
            allow_non_restored_state,
            wait,
        } => {
            let client = remote::client(&cli.server)?;
            let restoring = savepoint.is_some();
            let id = remote::submit(&client, &job, savepoint, allow_non_restored_state)?;
            println!("{id}");
            if restoring {
                remote::report_restore(&client, &id)?;
            }
            if wait {
                remote::wait(&client, &id)?;
            }
            Ok(())
        }
        Command::Put { local, path } => remote::put(&remote::client(&cli.server)?, &local, &path),
        Command::Get { path } => remote::get(&remote::client(&cli.server)?, &path),
        Command::Jobs { id, subtasks, output } => {
            let client = remote::client(&cli.server)?;
            match id {
                Some(id) => remote::show_job(&client, &id, subtasks, output),
                None => remote::list_jobs(&client, output),
            }
        }
        Command::Plan { job, format } => {
            let plan = if std::path::Path::new(&job).is_file() {
                sluice::job::Plan::of(&JobGraph::from_file(std::path::Path::new(&job))?)
            } else {
                remote::plan(&remote::client(&cli.server)?, &job)?
            };
            match format {
                PlanFormat::Text => print!("{}", plan.to_text()),
                PlanFormat::Json => println!("{}", serde_json::to_string_pretty(&plan)?),
                PlanFormat::Dot => print!("{}", plan.to_dot()),
            }
            Ok(())
        }
        Command::Logs { id, follow, tail } => remote::logs(&remote::client(&cli.server)?, &id, tail, follow),
        Command::Checkpoints { id, output } => remote::stored(&remote::client(&cli.server)?, &id, false, output),
        Command::Savepoints { id, output } => remote::stored(&remote::client(&cli.server)?, &id, true, output),
        Command::Stop { id } => remote::savepoint(&remote::client(&cli.server)?, &id, true),
        Command::Cancel { id } => remote::cancel(&remote::client(&cli.server)?, &id),
        Command::Taskmanagers => remote::taskmanagers(&remote::client(&cli.server)?),
        Command::Savepoint { job, stop, .. } if !std::path::Path::new(&job).is_file() => {
            remote::savepoint(&remote::client(&cli.server)?, &job, stop)
        }
        Command::Run {
            job,
            quiet,
            restore,
            allow_non_restored_state,
        } => {
            let restore = restore.map(|r| match r.as_str() {
                "latest" => Restore::Latest,
                path => Restore::Path(PathBuf::from(path)),
            });
            let options = RunOptions {
                restore,
                allow_non_restored_state,
                ..RunOptions::default()
            };
            run_command(&engine()?, &job, quiet, options)
        }
        Command::Savepoint { job, stop, timeout_s } => {
            let job = PathBuf::from(job);
            let graph = JobGraph::from_file(&job)?;
            let Some(c) = &graph.spec.checkpoints else {
                anyhow::bail!("{}: the job has no `[checkpoints]`, so it cannot take savepoints", job.display());
            };
            let dir = sluice::checkpoint::resolve_location(&graph.base_dir, &c.dir);
            if sluice::checkpoint::object::is_url(&dir) {
                anyhow::bail!(
                    "{}: `sluice savepoint` asks through files beside local checkpoints, and this job's are on an object store ({}); take the savepoint through the HTTP API of a server or cluster",
                    job.display(),
                    dir.display()
                );
            }
            let path = sluice::checkpoint::requests::request_savepoint(&dir, stop, Duration::from_secs(timeout_s))?;
            println!("{}", path.display());
            Ok(())
        }
        Command::Check { job } => {
            let graph = JobGraph::from_file(&job)?;
            graph.load_components(&*engine()?)?;
            for w in graph.warnings() {
                eprintln!("warning: {w}");
            }
            let plan = sluice::job::Plan::of(&graph);
            println!(
                "{}: ok ({} nodes in {} tasks, {} subtasks; `sluice plan {}` shows them)",
                job.display(),
                plan.nodes.len(),
                plan.tasks.len(),
                plan.subtasks(),
                job.display()
            );
            Ok(())
        }
        Command::New { dir, lang, kind, sdk } => {
            let files = scaffold::create(&dir, &lang, &kind, sdk.as_deref())?;
            for f in &files {
                println!("{}", f.display());
            }
            eprintln!(
                "created {} ({lang}, {kind}): build it as its README.md says, then `sluice run job.toml` in it",
                dir.display()
            );
            Ok(())
        }
        Command::Inspect { component } => {
            let c = engine()?.load_file(&component)?;
            match c.info.world {
                Some(w) => println!("world: {w}"),
                None => println!("world: none (exports no sluice:udf operator interface)"),
            }
            println!("digest: {}", c.digest);
            println!("exports:");
            for e in &c.info.exports {
                println!("  {e}");
            }
            println!("imports:");
            for i in &c.info.imports {
                println!("  {i}");
            }
            Ok(())
        }
        Command::CBindings { world, out_dir } => {
            for f in sluice::toolchain::c_bindings(&world, &out_dir)? {
                println!("{}", f.display());
            }
            Ok(())
        }
        Command::Componentize { module, output } => {
            let core = std::fs::read(&module).with_context(|| format!("reading {}", module.display()))?;
            let component = sluice::toolchain::componentize(&core).with_context(|| format!("componentizing {}", module.display()))?;
            let tmp = output.with_extension("wasm.tmp");
            std::fs::write(&tmp, &component).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &output).with_context(|| format!("writing {}", output.display()))?;
            Ok(())
        }
        Command::Bench {
            name,
            query: Some(query),
            events,
            udfs,
            runs,
            ..
        } if name == "nexmark" => {
            let line = sluice::bench::nexmark(&engine()?, &query, events.unwrap_or(10_000_000), runs, &udfs)?;
            println!("{line}");
            Ok(())
        }
        Command::Bench {
            name,
            query: _,
            runs,
            events,
            udfs,
            lang,
            alongside,
        } => {
            let (dir, events) = bench_udfs(&lang, &udfs, events)?;
            let engine = engine()?;
            let Some(other) = alongside else {
                println!("lang={lang} {}", sluice::bench::run(&engine, &name, events, &dir, runs)?);
                return Ok(());
            };
            let (other_dir, other_events) = bench_udfs(&other, &udfs, None)?;
            println!(
                "lang={lang} alongside=none {}",
                sluice::bench::run(&engine, &name, events, &dir, runs)?
            );
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let background = {
                let (engine, stop) = (engine.clone(), stop.clone());
                std::thread::spawn(move || -> anyhow::Result<u64> {
                    let mut runs = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        sluice::bench::run(&engine, "keyed-count", other_events, &other_dir, 1)?;
                        runs += 1;
                    }
                    Ok(runs)
                })
            };
            let line = sluice::bench::run(&engine, &name, events, &dir, runs);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let runs = background.join().map_err(|_| anyhow::anyhow!("the background job panicked"))??;
            println!("lang={lang} alongside={other} {} alongside_runs_completed={runs}", line?);
            Ok(())
        }
    }
}

/// Where the components of a benchmark in `lang` are, and its default size
/// (smaller for the interpreted languages).
fn bench_udfs(lang: &str, rust_udfs: &std::path::Path, events: Option<u64>) -> anyhow::Result<(PathBuf, Option<u64>)> {
    Ok(match lang {
        "rust" => (rust_udfs.to_owned(), events),
        "c" => (PathBuf::from("target/guests/c"), events),
        "python" | "js" => (PathBuf::from("target/guests").join(lang), events.or(Some(300_000))),
        other => anyhow::bail!("unknown language {other:?}: rust, python, js or c"),
    })
}

fn run_command(engine: &Arc<WasmEngine>, job: &std::path::Path, quiet: bool, options: RunOptions) -> anyhow::Result<()> {
    let graph = JobGraph::from_file(job)?;
    let handle = run_job(&graph, engine, options).with_context(|| format!("starting job `{}`", graph.spec.name))?;
    let progress = |final_line: bool| {
        let parts: Vec<String> = handle
            .metrics
            .iter()
            .map(|m| {
                let late = match (m.records_late(), m.records_late_dropped()) {
                    (0, _) => String::new(),
                    (n, 0) => format!(" late={n}"),
                    (n, d) => format!(" late={n} (dropped {d})"),
                };
                format!("{} in={} out={}{late}", m.name, m.records_in(), m.records_out())
            })
            .collect();
        eprintln!("{}[{}] {}", if final_line { "" } else { "  " }, graph.spec.name, parts.join(" | "));
    };
    let mut last = std::time::Instant::now();
    while !handle.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
        if !quiet && last.elapsed() >= Duration::from_secs(1) {
            progress(false);
            last = std::time::Instant::now();
        }
    }
    if !quiet {
        progress(true);
    }
    let summary = handle.wait().with_context(|| format!("job `{}` failed", graph.spec.name))?;
    if !quiet {
        let mut notes = Vec::new();
        if graph.spec.checkpoints.is_some() {
            notes.push(format!("{} checkpoints, {} restarts", summary.checkpoints, summary.restarts));
        }
        if graph.spec.mode == sluice::spec::ExecutionMode::Batch {
            let rss = sluice::tenancy::process_status_kb("VmHWM").map_or(0.0, |kb| kb as f64 / 1024.0);
            notes.push(format!("batch mode, {} task re-runs, peak RSS {rss:.1} MB", summary.restarts));
        }
        let dropped: u64 = summary.metrics.iter().map(|m| m.records_late_dropped()).sum();
        if dropped > 0 {
            notes.push(format!("{dropped} late records dropped"));
        }
        let extra = if notes.is_empty() {
            String::new()
        } else {
            format!(" ({})", notes.join(", "))
        };
        match &summary.savepoint {
            Some(p) => eprintln!("[{}] stopped with savepoint {}{extra}", graph.spec.name, p.display()),
            None => eprintln!("[{}] finished in {:.2}s{extra}", graph.spec.name, summary.duration.as_secs_f64()),
        }
    }
    Ok(())
}
