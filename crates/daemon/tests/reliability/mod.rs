//! The table of `docs/RELIABILITY.md`, fed by every fault case in every test binary that
//! has them ([`SUITES`]).
//!
//! Each case records its row (case, bound, measured or why it failed) as one JSON file in
//! `target/tmp/reliability-rows/SUITE/`, next to its suite's manifest (the suite's cases in
//! table order, rewritten with every row), and the doc is rendered again from every row
//! there. Cargo runs test binaries one after another, so whichever runs last leaves a
//! table of every case; a suite that has not run in this target directory yet is shown as
//! such, a case of a manifest without a row as not run, and rows of cases no manifest
//! lists any more (renamed, removed) are left out. Commit the doc only from a run of every
//! suite in which every case passed.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The test binaries with fault cases, in table order.
pub const SUITES: &[&str] = &["faults", "faults_guardian"];

/// A case's name and the bound it promises.
pub type CaseSpec = (&'static str, &'static str);

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub case: String,
    pub bound: String,
    /// What the case measured, or why it failed.
    pub result: Result<String, String>,
    /// How long the case ran.
    pub ran_ms: u64,
}

/// A suite's cases (name, bound) in table order.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    cases: Vec<(String, String)>,
}

/// The fault cases of one test binary.
#[derive(Debug, Clone)]
pub struct Suite {
    /// One of [`SUITES`].
    name: &'static str,
    /// Its cases, in table order.
    cases: Vec<CaseSpec>,
}

/// Serialises recording and rendering within a test binary (its tests run on threads);
/// cargo runs the binaries one after another.
static RECORDING: Mutex<()> = Mutex::new(());

impl Suite {
    /// The suite `name` (one of [`SUITES`]) of these cases, in table order.
    pub fn new(name: &'static str, cases: impl IntoIterator<Item = CaseSpec>) -> Self {
        assert!(SUITES.contains(&name), "unknown suite {name}");
        Self {
            name,
            cases: cases.into_iter().collect(),
        }
    }

    /// Runs `case` (one of this suite's cases) and records its row: Ok with what it
    /// measured, or Err with its panic message.
    pub fn run(&self, case: &str, body: impl FnOnce() -> String) -> Row {
        let row = self.measure(case, body);
        self.record(&row);
        row
    }

    /// Runs `case` as [`Suite::run`] does, without recording its row.
    pub fn measure(&self, case: &str, body: impl FnOnce() -> String) -> Row {
        let started = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body))
            .map_err(|panic| panic_message(panic.as_ref()));
        self.row(case, result, started.elapsed())
    }

    /// As [`Suite::run`] for a case that is a `#[test]` of its own: fails it if the case
    /// failed.
    pub fn run_test(&self, case: &str, body: impl FnOnce() -> String) {
        if let Err(e) = self.run(case, body).result {
            panic!("{case}: {e}");
        }
    }

    fn row(&self, case: &str, result: Result<String, String>, ran: Duration) -> Row {
        let (_, bound) = self
            .cases
            .iter()
            .find(|(name, _)| *name == case)
            .unwrap_or_else(|| panic!("{case:?} is not a case of suite {}", self.name));
        Row {
            case: case.into(),
            bound: (*bound).into(),
            result,
            ran_ms: ran.as_millis() as u64,
        }
    }

    /// Writes `row` and this suite's manifest, then renders the doc from every row.
    pub fn record(&self, row: &Row) {
        let _one = RECORDING.lock().unwrap_or_else(|p| p.into_inner());
        self.write_row(&rows_dir(), row);
        write_atomic(&doc_path(), render(&rows_dir()).as_bytes());
    }

    /// Writes `row` and this suite's manifest under `dir`.
    fn write_row(&self, dir: &Path, row: &Row) {
        let dir = dir.join(self.name);
        std::fs::create_dir_all(&dir).unwrap();
        let manifest = Manifest {
            cases: self
                .cases
                .iter()
                .map(|(c, b)| ((*c).to_owned(), (*b).to_owned()))
                .collect(),
        };
        write_atomic(
            &dir.join("manifest.json"),
            &serde_json::to_vec_pretty(&manifest).unwrap(),
        );
        write_atomic(
            &dir.join(format!("{}.json", slug(&row.case))),
            &serde_json::to_vec_pretty(row).unwrap(),
        );
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panicked".into())
}

fn rows_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("reliability-rows")
}

fn doc_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/RELIABILITY.md")
}

/// A file name for a case: its letters and digits, the rest as dashes.
fn slug(case: &str) -> String {
    case.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

fn write_atomic(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A case of a suite's manifest: its name, its bound, and its row if it has run.
type Listed = (String, String, Option<Row>);

/// Every suite's cases found under `dir`, in table order: (suite, its cases), `None` for
/// a suite that has not run.
fn collect(dir: &Path) -> Vec<(&'static str, Option<Vec<Listed>>)> {
    SUITES
        .iter()
        .map(|&suite| {
            let dir = dir.join(suite);
            let manifest: Option<Manifest> = std::fs::read(dir.join("manifest.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let rows = manifest.map(|m| {
                m.cases
                    .into_iter()
                    .map(|(case, bound)| {
                        let row = std::fs::read(dir.join(format!("{}.json", slug(&case))))
                            .ok()
                            .and_then(|b| serde_json::from_slice::<Row>(&b).ok())
                            .filter(|r| r.case == case);
                        (case, bound, row)
                    })
                    .collect()
            });
            (suite, rows)
        })
        .collect()
}

/// The doc, from the rows under `dir`.
fn render(dir: &Path) -> String {
    let mut text = String::from(concat!(
        "# Reliability: the fault-injection suite\n\n",
        "Written by the fault cases themselves (`crates/daemon/tests/faults.rs` and\n",
        "`crates/daemon/tests/faults_guardian.rs`; `cargo test -p hv-vssd --test faults\n",
        "--test faults_guardian`, as root), each recording its row as it ends: the real\n",
        "`hv-vssd` in drop-in mode against the kernel emulator, on loop-mounted ext4\n",
        "filesystems made by the tests. *Bound* is what the case promises (time from the\n",
        "fault until every write that blocked while frozen has completed, or that the host\n",
        "got a clean answer); *measured* is the case's last run.\n\n",
        "| case | bound | measured | result |\n|---|---|---|---|\n",
    ));
    let cell = |s: &str| s.replace('|', "/").replace('\n', " ");
    for (suite, rows) in collect(dir) {
        let Some(rows) = rows else {
            text.push_str(&format!(
                "| (every case of `tests/{suite}.rs`) | | | **not run** |\n"
            ));
            continue;
        };
        for (case, bound, row) in rows {
            let line = match row {
                None => format!("| {} | {} | | **not run** |\n", cell(&case), cell(&bound)),
                Some(row) => {
                    let (measured, verdict) = match &row.result {
                        Ok(m) => (cell(m), "pass".to_owned()),
                        Err(e) => (
                            format!("case ran {} ms", row.ran_ms),
                            format!("**FAIL**: {}", cell(e)),
                        ),
                    };
                    format!(
                        "| {} | {} | {measured} | {verdict} |\n",
                        cell(&case),
                        cell(&bound)
                    )
                }
            };
            text.push_str(&line);
        }
    }
    text.push_str(concat!(
        "\n## Not in the suite\n\n",
        "The check, the application freeze and the thaw are held open by an application ",
        "client that keeps its ack, so the SIGKILL lands while the daemon waits for it; a ",
        "SIGKILL while the daemon's own FITHAW blocks is not a case here (the guardian's ",
        "is). The UIO cases use one driver generation (the daemon owns the interrupt mask); ",
        "`tests/uio.rs` runs both. Recovery (start-up, `hv-vss thaw --recover`) and the ",
        "guardian give each FITHAW a deadline and go on, but a process whose FITHAW thread ",
        "is still blocked cannot finish exiting until that call returns (uninterruptible ",
        "sleep).\n\n",
        "## Observed\n\n",
        "Observed while building the stop case (kernel 6.18): a FITHAW on a filesystem whose ",
        "FIFREEZE is still blocked (its loop image on another frozen filesystem) blocks, and ",
        "the filesystem holding the image was found thawed afterwards. The guardian therefore ",
        "thaws a filesystem at once only when the FIFREEZE thread confirmed it, and one whose ",
        "FIFREEZE is in flight only once the call has returned, whether the daemon exited, ",
        "hung or was stopped (SIGSTOP during a slow FIFREEZE above; without the confirmation ",
        "the guardian blocks in that FITHAW and the confirmed filesystem stays frozen).\n",
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn suite() -> Suite {
        Suite::new("faults", [("one", "1 s"), ("two | pipes", "2 s")])
    }

    #[test]
    fn every_suite_and_case_shows_with_its_state() {
        let dir = tempfile::tempdir().unwrap();
        let failed = suite().row(
            "two | pipes",
            Err("boom\nline".into()),
            Duration::from_millis(7),
        );
        suite().write_row(dir.path(), &failed);
        let doc = render(dir.path());
        assert!(doc.contains("| one | 1 s | | **not run** |"), "{doc}");
        assert!(
            doc.contains("| two / pipes | 2 s | case ran 7 ms | **FAIL**: boom line |"),
            "{doc}"
        );
        assert!(
            doc.contains("| (every case of `tests/faults_guardian.rs`) | | | **not run** |"),
            "{doc}"
        );
        let passed = suite().row("one", Ok("3 ms".into()), Duration::from_millis(9));
        suite().write_row(dir.path(), &passed);
        let doc = render(dir.path());
        assert!(doc.contains("| one | 1 s | 3 ms | pass |"), "{doc}");
        // In manifest order, whatever order the rows came in.
        assert!(doc.find("| one |") < doc.find("| two / pipes |"));
    }

    #[test]
    fn rows_of_cases_no_manifest_lists_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let old = Row {
            case: "renamed since".into(),
            bound: "1 s".into(),
            result: Ok("1 ms".into()),
            ran_ms: 1,
        };
        suite().write_row(dir.path(), &old);
        let doc = render(dir.path());
        assert!(!doc.contains("renamed since"), "{doc}");
    }
}
