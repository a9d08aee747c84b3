//! Scenarios: named steps of one test binary, run in sequence against one lab. Each cleans up
//! the objects it applied, whether it passed or not, so the next starts from an empty cluster;
//! a failed scenario prints diagnostics and the others still run. The test fails at the end,
//! naming every failed scenario.

use std::cell::RefCell;
use std::ops::Deref;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use crate::lab::Lab;

/// A running scenario: the lab, plus the objects it applied (deleted when it ends).
pub struct Scenario<'a> {
    lab: &'a Lab,
    name: &'a str,
    applied: RefCell<Vec<String>>,
    failed_checks: RefCell<Vec<String>>,
    /// The panic message of each failed check, for the test's last lines.
    causes: RefCell<Vec<String>>,
}

/// The message a panic carried (`panic!` with a literal or a formatted string).
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(a panic without a message)".to_string())
}

/// The first line of a message, at most 400 characters: the final summary must stay short.
fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("");
    match line.char_indices().nth(400) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_string(),
    }
}

impl Deref for Scenario<'_> {
    type Target = Lab;

    fn deref(&self) -> &Lab {
        self.lab
    }
}

impl<'a> Scenario<'a> {
    pub fn new(lab: &'a Lab, name: &'a str) -> Self {
        Scenario {
            lab,
            name,
            applied: RefCell::new(Vec::new()),
            failed_checks: RefCell::new(Vec::new()),
            causes: RefCell::new(Vec::new()),
        }
    }

    pub fn name(&self) -> &str {
        self.name
    }

    /// Prints a progress line (shown with the test's output).
    pub fn step(&self, what: &str) {
        eprintln!("e2e[{}/{}]: {what}", self.lab.name(), self.name);
    }

    fn remember(&self, refs: &[String]) {
        let mut a = self.applied.borrow_mut();
        for r in refs {
            if !a.contains(r) {
                a.push(r.clone());
            }
        }
    }

    /// Applies `yaml`, waits until all of it is Ready, and remembers it for clean-up.
    #[track_caller]
    pub fn apply(&self, yaml: &str, timeout: Duration) -> Vec<String> {
        let t = format!("{}s", timeout.as_secs());
        self.apply_with(yaml, &["--wait", "--timeout", &t])
    }

    /// Applies `yaml` without waiting for Ready (for objects that cannot be Ready yet, such
    /// as a link to a container that does not exist), and remembers it for clean-up.
    #[track_caller]
    pub fn apply_nowait(&self, yaml: &str) -> Vec<String> {
        self.apply_with(yaml, &[])
    }

    #[track_caller]
    fn apply_with(&self, yaml: &str, extra: &[&str]) -> Vec<String> {
        let out = self.lab.apply_raw(yaml, extra);
        // Remembered before judging: a timed-out --wait still created the objects.
        let refs = crate::lab::applied_refs(&out.stdout);
        self.remember(&refs);
        if !out.success() {
            panic!(
                "apply failed:\n{}\n\nthe manifest:\n{yaml}\n{}",
                out.describe_failure(),
                self.lab.diagnostics()
            );
        }
        refs
    }

    /// Applies a manifest file of the repository (`manifests/demo.yaml`).
    #[track_caller]
    pub fn apply_file(&self, path: &str, timeout: Duration) -> Vec<String> {
        let full = self.lab.repo().join(path);
        let yaml = std::fs::read_to_string(&full)
            .unwrap_or_else(|e| panic!("failed to read {}: {e}", full.display()));
        self.apply(&yaml, timeout)
    }

    /// Runs one check of the scenario; when it fails (panics), the failure is recorded, the
    /// scenario goes on with its next check, and fails at its end. Returns whether it passed.
    pub fn check(&self, name: &str, f: impl FnOnce()) -> bool {
        self.step(&format!("check {name}"));
        let t = Instant::now();
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(()) => {
                self.step(&format!(
                    "check {name} passed in {:.1} s",
                    t.elapsed().as_secs_f64()
                ));
                true
            }
            Err(payload) => {
                self.step(&format!("check {name} FAILED (see the panic above)"));
                self.causes.borrow_mut().push(format!(
                    "{}/{name}: {}",
                    self.name,
                    first_line(&panic_text(payload.as_ref()))
                ));
                eprintln!("{}", self.lab.diagnostics());
                self.failed_checks.borrow_mut().push(name.to_string());
                false
            }
        }
    }

    /// Forgets objects the scenario deleted itself.
    pub fn forget(&self, refs: &[&str]) {
        self.applied
            .borrow_mut()
            .retain(|r| !refs.contains(&r.as_str()));
    }

    /// Deletes everything the scenario applied.
    fn cleanup(&self) -> Result<(), String> {
        let refs = self.applied.borrow().clone();
        if refs.is_empty() {
            return Ok(());
        }
        self.step(&format!("cleaning up {}", refs.join(" ")));
        self.lab.delete(&refs, Duration::from_secs(180))
    }
}

/// A scenario: a name and the function that runs it (it fails by panicking).
pub type ScenarioFn = fn(&Scenario<'_>);

/// Runs `scenarios` in order against `lab` and fails (panics) at the end if any failed or
/// could not clean up. `TOPO_E2E_ONLY=a,b` runs only those named.
#[track_caller]
pub fn run_scenarios(lab: &Lab, scenarios: &[(&str, ScenarioFn)]) {
    let only: Option<Vec<String>> = std::env::var("TOPO_E2E_ONLY")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.split(',').map(|p| p.trim().to_string()).collect());
    let mut failed = Vec::new();
    let mut causes = Vec::new();
    let mut ran = 0;
    for (name, f) in scenarios {
        if only.as_ref().is_some_and(|o| !o.iter().any(|x| x == name)) {
            continue;
        }
        ran += 1;
        let sc = Scenario::new(lab, name);
        sc.step("start");
        let t = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| f(&sc)));
        let checks = sc.failed_checks.borrow().clone();
        causes.extend(sc.causes.borrow().iter().cloned());
        if let Err(payload) = &result {
            causes.push(format!(
                "{name}: {}",
                first_line(&panic_text(payload.as_ref()))
            ));
        }
        if !checks.is_empty() {
            eprintln!(
                "e2e[{}/{name}]: failed checks: {}",
                lab.name(),
                checks.join(", ")
            );
        }
        let passed = result.is_ok() && checks.is_empty();
        if !passed {
            eprintln!(
                "e2e[{}/{name}]: FAILED after {:.1} s",
                lab.name(),
                t.elapsed().as_secs_f64()
            );
            if result.is_err() {
                eprintln!("{}", lab.diagnostics());
            }
        }
        if !passed && lab.keep() {
            eprintln!(
                "e2e[{}/{name}]: TOPO_E2E_KEEP: the failed scenario's objects stay for inspection; no further scenario runs",
                lab.name()
            );
            failed.push(name.to_string());
            break;
        }
        match sc.cleanup() {
            Ok(()) => {}
            Err(e) => {
                eprintln!("e2e[{}/{name}]: clean-up failed: {e}", lab.name());
                if passed {
                    eprintln!("{}", lab.diagnostics());
                }
                failed.push(format!("{name} (clean-up)"));
            }
        }
        if passed {
            sc.step(&format!("passed in {:.1} s", t.elapsed().as_secs_f64()));
        } else if checks.is_empty() {
            failed.push(name.to_string());
        } else {
            failed.push(format!("{name} ({})", checks.join(", ")));
        }
    }
    if ran == 0 {
        panic!(
            "no scenario matched TOPO_E2E_ONLY; scenarios: {}",
            scenarios.iter().map(|s| s.0).collect::<Vec<_>>().join(", ")
        );
    }
    if !failed.is_empty() {
        // The causes come last so that the tail of a long CI log still says what failed.
        panic!(
            "{} of {ran} scenario(s) failed: {} (messages and diagnostics above; logs are saved under target/e2e-logs/{})\n  because:\n  - {}",
            failed.len(),
            failed.join(", "),
            lab.name(),
            causes.join("\n  - ")
        );
    }
}
