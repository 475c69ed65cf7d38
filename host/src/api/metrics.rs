//! `GET /metrics`: Prometheus text exposition (format 0.0.4).
//!
//! Per job and operator: records in/out, busy and backpressured time,
//! watermark lag; per job: state, restarts, checkpoints; per tenant: guest
//! CPU time, fuel, guest memory, keyed state, live instances, dropped log
//! lines; per process: live guest instances and resident memory. A tenant's
//! token sees its own series; the admin token sees every tenant's.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::jobs::{JobState, Tenant};

/// Escape a label value.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", esc(v))).collect();
        if l.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{}}} {value}", l.join(","));
        }
    }
}

/// The exposition for `tenants`.
pub fn render(tenants: &[&Tenant]) -> String {
    let mut out = String::new();
    let mut f = Family { out: &mut out };
    let jobs: Vec<_> = tenants
        .iter()
        .flat_map(|t| t.jobs().into_iter().map(move |j| (t.config.id.as_str().to_owned(), j)))
        .collect();
    let details: Vec<(String, serde_json::Value)> = jobs.iter().map(|(t, j)| (t.clone(), j.details())).collect();

    f.head("sluice_job_state", "gauge", "1 for the state a job is in.");
    for (t, d) in &details {
        let (id, name, state) = (s(&d["id"]), s(&d["name"]), s(&d["state"]));
        f.sample(
            "sluice_job_state",
            &[("tenant", t), ("job", &id), ("name", &name), ("state", &state)],
            1.0,
        );
    }
    let per_job = [
        ("sluice_job_restarts_total", "counter", "Restarts after failures.", "/restarts", 1.0),
        (
            "sluice_job_checkpoints_completed_total",
            "counter",
            "Checkpoints and savepoints completed.",
            "/checkpoints/completed",
            1.0,
        ),
        (
            "sluice_job_last_checkpoint_duration_seconds",
            "gauge",
            "Duration of the newest completed checkpoint.",
            "/checkpoints/last/duration_ms",
            1000.0,
        ),
        (
            "sluice_job_last_checkpoint_size_bytes",
            "gauge",
            "State bytes written by the newest completed checkpoint.",
            "/checkpoints/last/size_bytes",
            1.0,
        ),
    ];
    for (name, kind, help, pointer, div) in per_job {
        f.head(name, kind, help);
        for (t, d) in &details {
            if let Some(v) = d.pointer(pointer).and_then(serde_json::Value::as_f64) {
                f.sample(name, &[("tenant", t), ("job", &s(&d["id"]))], v / div);
            }
        }
    }
    let ops = [
        (
            "sluice_operator_records_in_total",
            "counter",
            "Records received.",
            "records_in",
            1.0,
        ),
        (
            "sluice_operator_records_out_total",
            "counter",
            "Records emitted.",
            "records_out",
            1.0,
        ),
        (
            "sluice_operator_records_late_total",
            "counter",
            "Records behind their windows' allowed lateness (to the late output, or dropped).",
            "records_late",
            1.0,
        ),
        (
            "sluice_operator_records_late_dropped_total",
            "counter",
            "Late records dropped because no edge reads the operator's late output.",
            "records_late_dropped",
            1.0,
        ),
        (
            "sluice_operator_bytes_in_total",
            "counter",
            "Bytes of the records received (for a sink: what it wrote), encoded.",
            "bytes_in",
            1.0,
        ),
        (
            "sluice_operator_bytes_out_total",
            "counter",
            "Bytes of the records emitted (for a source: what it read), encoded.",
            "bytes_out",
            1.0,
        ),
        (
            "sluice_source_lag_records",
            "gauge",
            "How far a source is behind its input, in records (Kafka: end offsets minus committed offsets).",
            "lag",
            1.0,
        ),
        (
            "sluice_operator_busy_seconds_total",
            "counter",
            "Time spent working, summed over subtasks.",
            "busy_ms",
            1000.0,
        ),
        (
            "sluice_operator_backpressured_seconds_total",
            "counter",
            "Time blocked on full output channels, summed over subtasks.",
            "backpressured_ms",
            1000.0,
        ),
        (
            "sluice_operator_watermark_lag_seconds",
            "gauge",
            "Processing time minus the operator's lowest output watermark.",
            "watermark_lag_ms",
            1000.0,
        ),
    ];
    for (name, kind, help, field, div) in ops {
        f.head(name, kind, help);
        for (t, d) in &details {
            let job = s(&d["id"]);
            for o in d["operators"].as_array().into_iter().flatten() {
                if o[field].is_number() {
                    f.sample(
                        name,
                        &[("tenant", t), ("job", &job), ("operator", &s(&o["name"]))],
                        n(&o[field]) / div,
                    );
                }
            }
        }
    }
    f.head("sluice_tenant_jobs", "gauge", "Jobs kept by the server, by state.");
    for t in tenants {
        for st in [
            JobState::Created,
            JobState::Running,
            JobState::Restarting,
            JobState::Finished,
            JobState::Canceled,
            JobState::Failed,
        ] {
            let count = details
                .iter()
                .filter(|(id, d)| id == t.config.id.as_str() && d["state"] == st.as_str())
                .count();
            f.sample(
                "sluice_tenant_jobs",
                &[("tenant", t.config.id.as_str()), ("state", st.as_str())],
                count as f64,
            );
        }
    }
    let meters: [Meter; 6] = [
        (
            "sluice_tenant_guest_cpu_seconds_total",
            "counter",
            "Time spent inside guest calls.",
            |t| t.meter.guest_cpu_ns.load(Ordering::Relaxed) as f64 / 1e9,
        ),
        (
            "sluice_tenant_fuel_consumed_total",
            "counter",
            "Fuel burned by guests (tenants with fuel metering).",
            |t| t.meter.fuel.load(Ordering::Relaxed) as f64,
        ),
        (
            "sluice_tenant_guest_memory_bytes",
            "gauge",
            "Linear memory held by the tenant's guest instances.",
            |t| t.meter.memory_bytes.load(Ordering::Relaxed) as f64,
        ),
        (
            "sluice_tenant_state_bytes",
            "gauge",
            "Keyed state held by the tenant's keyed operators.",
            |t| t.meter.state_bytes.load(Ordering::Relaxed) as f64,
        ),
        ("sluice_tenant_guest_instances", "gauge", "Live guest instances.", |t| {
            t.meter.instances.load(Ordering::Relaxed) as f64
        }),
        (
            "sluice_tenant_log_lines_dropped_total",
            "counter",
            "Guest log lines dropped by the rate limit.",
            |t| t.meter.log_lines_dropped.load(Ordering::Relaxed) as f64,
        ),
    ];
    for (name, kind, help, get) in meters {
        f.head(name, kind, help);
        for t in tenants {
            f.sample(name, &[("tenant", t.config.id.as_str())], get(t));
        }
    }
    f.head(
        "sluice_guest_instances",
        "gauge",
        "Live guest instances in the process, all tenants.",
    );
    f.sample("sluice_guest_instances", &[], crate::wasm::live_instances() as f64);
    f.head(
        "sluice_process_resident_memory_bytes",
        "gauge",
        "Resident memory of the server process.",
    );
    f.sample(
        "sluice_process_resident_memory_bytes",
        &[],
        crate::tenancy::process_status_kb("VmRSS").map_or(0.0, |kb| (kb * 1024) as f64),
    );
    out
}

/// A per-tenant series: name, type, help, and how to read it.
type Meter = (&'static str, &'static str, &'static str, fn(&Tenant) -> f64);

fn s(v: &serde_json::Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

fn n(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}
