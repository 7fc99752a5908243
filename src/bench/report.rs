//! The results: every figure with its yardstick and target, the
//! correctness checks, and the machine they were measured on — as a table
//! for people, markdown for docs/performance.md and JSON for tooling.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::{Backend, Sizes, Stage};

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    PerSecond,
    Micros,
    Millis,
    Seconds,
    Megabytes,
    Count,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    AtLeast(f64),
    AtMost(f64),
}

impl Target {
    fn met(self, value: f64) -> bool {
        match self {
            Target::AtLeast(t) => value >= t,
            Target::AtMost(t) => value <= t,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    /// `None` for run-wide figures (the raw signing rates).
    pub backend: Option<Backend>,
    pub stage: Stage,
    pub figure: String,
    pub value: f64,
    pub unit: Unit,
    /// What the figure is compared with, measured in the same run.
    pub yardstick: Option<String>,
    pub target: Option<Target>,
    /// `None` without a target.
    pub pass: Option<bool>,
    /// How it was measured, when the figure alone does not say.
    pub note: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Check {
    pub backend: Option<Backend>,
    pub stage: Stage,
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu: String,
    pub memory_gb: f64,
    pub load_average: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub date: String,
    pub commit: String,
    pub build: String,
    pub machine: Machine,
    pub quick: bool,
    pub clients: usize,
    pub sizes: Sizes,
    pub rows: Vec<Row>,
    pub checks: Vec<Check>,
    /// Every check passed.
    pub ok: bool,
}

impl Report {
    pub fn new(quick: bool, clients: usize, sizes: Sizes) -> Self {
        Report {
            date: crate::service::rfc3339(chrono::Utc::now()),
            commit: git_commit(),
            build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
            .into(),
            machine: machine(),
            quick,
            clients,
            sizes,
            rows: Vec::new(),
            checks: Vec::new(),
            ok: true,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn row(
        &mut self,
        backend: Option<Backend>,
        stage: Stage,
        figure: impl Into<String>,
        value: f64,
        unit: Unit,
        yardstick: Option<String>,
        target: Option<Target>,
    ) {
        let row = Row {
            backend,
            stage,
            figure: figure.into(),
            value,
            unit,
            yardstick,
            target,
            pass: target.map(|t| t.met(value)),
            note: None,
        };
        println!("  {}", row_line(&row));
        self.rows.push(row);
    }

    /// Takes in the rows and checks of one backend's run.
    pub fn merge(&mut self, part: Report) {
        self.rows.extend(part.rows);
        self.ok &= part.ok;
        self.checks.extend(part.checks);
    }

    /// Adds `note` to the last row.
    pub fn note(&mut self, note: impl Into<String>) {
        if let Some(r) = self.rows.last_mut() {
            r.note = Some(note.into());
            println!("    ({})", r.note.as_deref().unwrap_or_default());
        }
    }

    pub fn check(
        &mut self,
        backend: Option<Backend>,
        stage: Stage,
        name: impl Into<String>,
        result: Result<String, String>,
    ) {
        let (ok, detail) = match result {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        let check = Check {
            backend,
            stage,
            name: name.into(),
            ok,
            detail,
        };
        println!(
            "  check {}: {} — {}",
            if check.ok { "ok" } else { "FAILED" },
            check.name,
            check.detail
        );
        self.ok &= ok;
        self.checks.push(check);
    }

    pub fn header(&self) -> String {
        format!(
            "clm bench run — {} — commit {} ({} build) — {} × {} — {:.0} GB RAM — load average at start {}{}",
            self.date,
            self.commit,
            self.build,
            self.machine.nproc,
            self.machine.cpu,
            self.machine.memory_gb,
            self.machine.load_average,
            if self.quick {
                " — QUICK (smoke) sizes"
            } else {
                ""
            },
        )
    }

    fn table(&self) -> Vec<[String; 7]> {
        self.rows
            .iter()
            .map(|r| {
                [
                    r.backend.map_or("—".to_string(), |b| b.name().to_string()),
                    r.figure.clone(),
                    format_value(r.value, r.unit),
                    r.yardstick.clone().unwrap_or_else(|| "—".into()),
                    r.target.map_or("—".into(), |t| format_target(t, r.unit)),
                    match r.pass {
                        Some(true) => "pass".into(),
                        Some(false) => "MISS".into(),
                        None => "—".into(),
                    },
                    r.note.clone().unwrap_or_default(),
                ]
            })
            .collect()
    }

    /// The plain-text table printed at the end of a run.
    pub fn human(&self) -> String {
        let head = [
            "backend",
            "figure",
            "value",
            "yardstick",
            "target",
            "result",
            "notes",
        ]
        .map(String::from);
        let rows = self.table();
        let mut widths = head.clone().map(|h| h.chars().count());
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: &[String; 7]| -> String {
            let mut s = String::new();
            for (c, w) in cells.iter().zip(widths) {
                let _ = write!(s, "{c:<w$}  ");
            }
            s.trim_end().to_string()
        };
        let mut out = format!("{}\n\n{}\n", self.header(), line(&head));
        for r in &rows {
            out.push_str(&line(r));
            out.push('\n');
        }
        out.push_str(&self.checks_summary());
        out
    }

    /// The same as a markdown document.
    pub fn markdown(&self) -> String {
        let mut out = format!("{}\n\n", self.header());
        out.push_str(
            "| backend | figure | value | yardstick (same run) | target | result | notes |\n",
        );
        out.push_str("|---|---|---:|---|---|---|---|\n");
        for r in self.table() {
            let _ = writeln!(out, "| {} |", r.join(" | "));
        }
        out.push('\n');
        out.push_str(&self.checks_summary());
        out
    }

    fn checks_summary(&self) -> String {
        let failed: Vec<&Check> = self.checks.iter().filter(|c| !c.ok).collect();
        let mut out = format!(
            "\ncorrectness checks: {} passed, {} failed\n",
            self.checks.len() - failed.len(),
            failed.len()
        );
        for c in failed {
            let _ = writeln!(
                out,
                "FAILED {} {}: {}",
                c.backend.map_or("", |b| b.name()),
                c.name,
                c.detail
            );
        }
        out
    }
}

fn row_line(r: &Row) -> String {
    let mut s = format!("{}: {}", r.figure, format_value(r.value, r.unit));
    if let Some(y) = &r.yardstick {
        let _ = write!(s, " (yardstick: {y})");
    }
    if let Some(t) = r.target {
        let _ = write!(
            s,
            " target {} → {}",
            format_target(t, r.unit),
            if t.met(r.value) { "pass" } else { "MISS" }
        );
    }
    s
}

pub fn format_value(v: f64, unit: Unit) -> String {
    match unit {
        Unit::PerSecond => format!("{}/s", thousands(v)),
        Unit::Micros => format!("{v:.1} µs"),
        Unit::Millis => format!("{v:.2} ms"),
        Unit::Seconds => format!("{v:.2} s"),
        Unit::Megabytes => format!("{v:.1} MB"),
        Unit::Count => thousands(v),
    }
}

fn format_target(t: Target, unit: Unit) -> String {
    match t {
        Target::AtLeast(x) => format!("≥ {}", format_value(x, unit)),
        Target::AtMost(x) => format!("≤ {}", format_value(x, unit)),
    }
}

/// `12345.6` → `12,346`.
pub fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU".to_string(), |(_, m)| m.trim().to_string());
    let memory_gb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let load_average = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    Machine {
        nproc: super::nproc(),
        cpu,
        memory_gb,
        load_average,
    }
}

/// The commit of the source tree this binary was built from (`+dirty` with
/// uncommitted changes), or `unknown` outside a git checkout.
fn git_commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(env!("CARGO_MANIFEST_DIR"))
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(commit) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{commit}+dirty")
            } else {
                commit
            }
        }
        None => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(0.4), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(format_value(12.345, Unit::Millis), "12.35 ms");
        assert_eq!(format_value(47.26, Unit::Micros), "47.3 µs");
        assert!(Target::AtLeast(5.0).met(5.0) && !Target::AtMost(5.0).met(5.1));
    }
}
