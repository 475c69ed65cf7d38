//! The PostgreSQL sink against a real PostgreSQL 15, started per test
//! (`initdb` and `pg_ctl` as the `postgres` user, on a free port): exactly
//! once under a SIGKILL loop and across a stopped server, upsert and
//! at-least-once, and the errors of bad settings.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::checkpoints::{kill_loop, start, wordcount_pipeline};
use crate::harness::{lit, root, run_toml, temp_dir};
use crate::wordcount::expected_counts;

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL server of one test, stopped (by `pg_ctl`, then by its pid)
/// and removed on drop.
pub(crate) struct Pg {
    pub port: u16,
    dir: PathBuf,
    max_prepared: u32,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Run `cmd` as the `postgres` user (root may not run the server).
fn as_postgres(cmd: &str) -> std::process::Output {
    let out = if is_root() {
        Command::new("su").args(["postgres", "-s", "/bin/sh", "-c", cmd]).output()
    } else {
        Command::new("sh").args(["-c", cmd]).output()
    };
    out.expect("running a PostgreSQL command")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Pg {
    pub(crate) fn start(name: &str, max_prepared: u32) -> Pg {
        assert!(
            Path::new(BIN).join("initdb").exists(),
            "PostgreSQL 15 is not installed ({BIN}); scripts/test installs it"
        );
        let dir = std::env::temp_dir().join(format!("sluice-pg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            let ok = Command::new("chown").arg("postgres:postgres").arg(&dir).status().unwrap().success();
            assert!(ok, "chown of {}", dir.display());
        }
        let data = dir.join("data");
        let out = as_postgres(&format!(
            "{BIN}/initdb -D {} -U postgres --auth=trust --no-sync -E UTF8",
            data.display()
        ));
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let pg = Pg {
            port: free_port(),
            dir,
            max_prepared,
        };
        pg.resume();
        pg
    }

    /// Start the server (again).
    pub(crate) fn resume(&self) {
        let data = self.dir.join("data");
        let out = as_postgres(&format!(
            "{BIN}/pg_ctl -D {d} -l {log} -w -t 30 start -o '-c listen_addresses=127.0.0.1 -p {port} \
             -c unix_socket_directories={d} -c max_prepared_transactions={mp} -c fsync=off'",
            d = data.display(),
            log = self.dir.join("log").display(),
            port = self.port,
            mp = self.max_prepared
        ));
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
        );
    }

    /// Stop the server at once (`-m immediate`: as a crash would).
    pub(crate) fn stop(&self) {
        let data = self.dir.join("data");
        let _ = as_postgres(&format!("{BIN}/pg_ctl -D {} -m immediate -w stop", data.display()));
    }

    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub(crate) fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url(), postgres::NoTls).expect("connecting to the test server")
    }

    /// Every row of `counts` as (word, count), sorted.
    pub(crate) fn counts(&self) -> Vec<(String, i64)> {
        let mut rows: Vec<(String, i64)> = self
            .client()
            .query("SELECT word, count FROM counts", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        rows.sort();
        rows
    }

    /// The prepared transactions the server holds.
    pub(crate) fn prepared(&self) -> Vec<String> {
        self.client()
            .query("SELECT gid FROM pg_prepared_xacts ORDER BY gid", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.stop();
        // pg_ctl stops the postmaster by its pid file; if it could not, do so.
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("data/postmaster.pid"))
            && let Some(pid) = pid.lines().next().and_then(|l| l.trim().parse::<i32>().ok())
        {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every update `(word, n)` of the keyed word count over the example text,
/// computed without the engine: a word seen n times gives 1, 2, …, n.
pub(crate) fn expected_updates() -> Vec<(String, i64)> {
    let text = std::fs::read_to_string(root().join("examples/data/wordcount.txt")).unwrap();
    let mut rows: Vec<(String, i64)> = expected_counts(&text)
        .into_iter()
        .flat_map(|(w, n)| (1..=n as i64).map(move |i| (w.clone(), i)))
        .collect();
    rows.sort();
    rows
}

/// The keyed word count into the table `counts` of `pg`.
fn job(pg: &Pg, rate: u64, sink: &str, restart: &str) -> String {
    wordcount_pipeline(
        "pg-wc",
        restart,
        "",
        &format!(
            "kind = \"file\"\npath = {}\nrecords_per_second = {rate}",
            lit(&root().join("examples/data/wordcount.txt"))
        ),
        2,
        &format!(
            "kind = \"postgres\"\nurl = \"{}\"\ntable = \"counts\"\nparallelism = 2\n{sink}",
            pg.url()
        ),
    )
}

pub(crate) fn create_counts(pg: &Pg, ddl: &str) {
    pg.client()
        .batch_execute(&format!("DROP TABLE IF EXISTS counts; CREATE TABLE counts ({ddl})"))
        .unwrap();
}

#[test]
fn postgres_exactly_once_under_a_sigkill_loop_loses_and_duplicates_no_row() {
    let pg = Pg::start("eo-kill", 16);
    let expected = expected_updates();
    assert_eq!(expected.len(), 37_835);
    let toml = job(
        &pg,
        1500,
        r#"delivery = "exactly-once""#,
        r#"{ strategy = "fixed-delay", attempts = 3, delay_ms = 50 }"#,
    );
    pg_kill_loop("pg-eo-kill", &pg, &toml);
}

/// SIGKILL loop of the word count `toml` into the table `counts` of `pg`:
/// each round starts with an empty table and ends with it equal to the
/// independent count, no prepared transaction left.
pub(crate) fn pg_kill_loop(name: &str, pg: &Pg, toml: &str) {
    let expected = expected_updates();
    kill_loop(
        name,
        toml,
        10,
        || create_counts(pg, "word text NOT NULL, count bigint NOT NULL"),
        |_| {
            let got = pg.counts();
            assert_eq!(got.len(), expected.len(), "rows in the table");
            assert!(got == expected, "the table differs from the independent count");
            assert_eq!(pg.prepared(), Vec::<String>::new(), "prepared transactions left behind");
        },
    );
}

#[test]
fn postgres_stopped_mid_run_restarts_the_job_which_completes_exactly_once() {
    let pg = Pg::start("eo-stop", 16);
    create_counts(&pg, "word text NOT NULL, count bigint NOT NULL");
    let toml = job(&pg, 3000, "", r#"{ strategy = "fixed-delay", attempts = 100, delay_ms = 100 }"#);
    let dir = temp_dir("pg-eo-stop");
    let handle = start(&toml, &dir, None);
    // Let some checkpoints commit, then take the server away for a while.
    let deadline = Instant::now() + Duration::from_secs(20);
    while pg.client().query_one("SELECT count(*) FROM counts", &[]).unwrap().get::<_, i64>(0) == 0 {
        assert!(Instant::now() < deadline, "nothing committed");
        std::thread::sleep(Duration::from_millis(50));
    }
    pg.stop();
    std::thread::sleep(Duration::from_millis(1500));
    pg.resume();
    let summary = handle.wait().expect("the job completes once the server is back");
    assert!(summary.restarts >= 1, "the job did not notice the server had stopped");
    assert!(pg.counts() == expected_updates(), "the table differs from the independent count");
    assert_eq!(pg.prepared(), Vec::<String>::new());
    eprintln!("restarts while the server was down: {}", summary.restarts);
}

#[test]
fn postgres_upsert_and_at_least_once() {
    let pg = Pg::start("upsert", 0);
    // Upsert on the primary key: each word's last count.
    create_counts(&pg, "word text PRIMARY KEY, count bigint NOT NULL");
    let dir = temp_dir("pg-upsert");
    run_toml(&job(&pg, 1_000_000, r#"delivery = "upsert""#, r#"{ strategy = "none" }"#), &dir).unwrap();
    let text = std::fs::read_to_string(root().join("examples/data/wordcount.txt")).unwrap();
    let mut expected: Vec<(String, i64)> = expected_counts(&text).into_iter().map(|(w, n)| (w, n as i64)).collect();
    expected.sort();
    assert!(pg.counts() == expected, "upsert: not each word's final count");
    // At-least-once without failures: every update once, and no prepared
    // transactions (max_prepared_transactions is 0 here).
    create_counts(&pg, "word text NOT NULL, count bigint NOT NULL, id bigserial PRIMARY KEY");
    let dir = temp_dir("pg-alo");
    run_toml(
        &job(&pg, 1_000_000, r#"delivery = "at-least-once""#, r#"{ strategy = "none" }"#),
        &dir,
    )
    .unwrap();
    assert!(
        pg.counts() == expected_updates(),
        "at-least-once without failures: every update once"
    );
}

#[test]
fn postgres_sink_settings_errors_name_the_problem() {
    let pg = Pg::start("errors", 0);
    create_counts(&pg, "word text NOT NULL, count bigint NOT NULL");
    let none = r#"{ strategy = "none" }"#;
    let run = |toml: &str| run_toml(toml, &temp_dir("pg-errors")).unwrap_err().to_string();
    // Checked before anything connects.
    let eo = job(&pg, 1_000_000, "", none);
    for (from, to, message) in [
        (format!("url = \"{}\"", pg.url()), String::new(), "a postgres sink needs `url`"),
        (
            "table = \"counts\"".to_owned(),
            "table = \"counts; drop\"".to_owned(),
            "is not `name` or `schema.name`",
        ),
        (
            "kind = \"postgres\"".to_owned(),
            "kind = \"postgres\"\nkey_columns = [\"word\"]".to_owned(),
            "`key_columns` is for delivery = \"upsert\"",
        ),
        (
            "kind = \"postgres\"".to_owned(),
            "kind = \"postgres\"\ncolumns = [\"a b\"]".to_owned(),
            "\"a b\" is not a column name",
        ),
        (
            "interval_ms = 100\ndir = \"ckpt\"".to_owned(),
            String::new(),
            "the job has no `[checkpoints]`",
        ),
        (
            "kind = \"postgres\"".to_owned(),
            "kind = \"postgres\"\nport = 5432".to_owned(),
            "unknown field `port`",
        ),
        (
            "kind = \"postgres\"".to_owned(),
            "kind = \"file\"\npath = \"out\"".to_owned(),
            "`url` is a setting of postgres and nats sinks, not of file sinks",
        ),
    ] {
        let toml = eo
            .replace("[checkpoints]\n", if from.starts_with("interval") { "" } else { "[checkpoints]\n" })
            .replace(&from, &to);
        let err = run(&toml);
        assert!(err.contains(message), "{message:?} not in: {err}");
    }
    // Checked when the sink opens: the job fails, naming the server and cause.
    let cases = [
        (eo.clone(), "max_prepared_transactions = 0".to_owned()),
        (
            eo.replace(&pg.url(), &format!("postgres://postgres@127.0.0.1:{}/postgres", free_port())),
            "cannot connect to PostgreSQL at 127.0.0.1:".to_owned(),
        ),
        (
            eo.replace("table = \"counts\"", "table = \"nope\""),
            format!("table `nope` does not exist in 127.0.0.1:{}/postgres", pg.port),
        ),
        (
            eo.replace("table = \"counts\"", "table = \"counts\"\ncolumns = [\"word\", \"total\"]"),
            "column `total` is not in table `counts` (it has word, count)".to_owned(),
        ),
        (
            job(&pg, 1_000_000, "delivery = \"upsert\"", none),
            "table `counts` has no primary key".to_owned(),
        ),
    ];
    for (toml, message) in cases {
        let err = run(&toml);
        assert!(err.contains(&message), "{message:?} not in: {err}");
    }
    // A record that is not a JSON object names the problem (tokenize emits
    // bare words).
    let words = job(&pg, 1_000_000, "delivery = \"at-least-once\"", none)
        .replace("from = \"count\"\nto = \"out\"", "from = \"tokenize\"\nto = \"out\"");
    let err = run(&words);
    assert!(err.contains("a record's value is not a JSON object"), "{err}");
    // Nothing reached the table.
    let n: i64 = pg.client().query_one("SELECT count(*) FROM counts", &[]).unwrap().get(0);
    assert_eq!(n, 0);
}
