//! The fuzzers' runner, shared by the fuzz tests of schema, controller and agent (each
//! includes this file with `#[path]`): proptest's runner with the case count from
//! `TOPO_FUZZ_CASES` (small by default, so `make test` keeps every fuzzer honest; `make fuzz`
//! asks for 1,000,000), a line per fuzzer with its cases, time and the process's peak RSS,
//! and a bound on that peak.
#![allow(dead_code)]

use std::time::Instant;

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestError, TestRunner};

/// Cases per fuzzer when `TOPO_FUZZ_CASES` is not set.
pub const DEFAULT_CASES: u32 = 500;
/// Peak resident memory a fuzz binary may reach (MiB): inputs are small, so more than this
/// means something keeps or amplifies what it is given.
pub const MAX_PEAK_RSS_MIB: u64 = 1024;

pub fn cases() -> u32 {
    std::env::var("TOPO_FUZZ_CASES")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// The process's peak resident set size in MiB (VmHWM), 0 when unknown.
pub fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

/// Stack of the thread the fuzzers run on. Generating a case walks proptest's nested
/// strategies recursively, and in a debug build their frames outgrow the 2 MiB of a test
/// thread (the overflow is in the generator, not in the code under test, whose inputs stay
/// small; `deep_nesting_and_aliases` tests deep inputs on an ordinary test thread).
pub const STACK_BYTES: usize = 64 << 20;

/// Runs `f` on a thread with [`STACK_BYTES`] of stack and returns what it returns; a panic
/// in `f` is the caller's panic.
pub fn on_big_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .stack_size(STACK_BYTES)
            .spawn_scoped(scope, f)
            .expect("a fuzzer thread");
        match handle.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Runs `test` on `cases()` inputs of the strategy `make` gives (made on the fuzzer's
/// thread: strategies are not all `Send`); a panic or an `Err` fails with the smallest input
/// proptest can shrink it to.
pub fn fuzz<S: Strategy>(
    name: &str,
    make: impl FnOnce() -> S + Send,
    test: impl Fn(S::Value) -> Result<(), String> + Send,
) where
    S::Value: std::fmt::Debug,
{
    on_big_stack(|| run(name, make(), test));
}

fn run<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), String>)
where
    S::Value: std::fmt::Debug,
{
    let cases = cases();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let started = Instant::now();
    let result = runner.run(&strategy, |input| {
        test(input).map_err(proptest::test_runner::TestCaseError::fail)
    });
    let secs = started.elapsed().as_secs_f64();
    let peak = peak_rss_mib();
    eprintln!(
        "fuzz {name}: {cases} cases in {secs:.1} s ({:.0} cases/s), peak RSS {peak} MiB",
        f64::from(cases) / secs.max(1e-9)
    );
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, input)) => panic!("fuzz {name} failed: {why}\ninput: {input:#?}"),
        Err(TestError::Abort(why)) => panic!("fuzz {name} aborted: {why}"),
    }
    assert!(
        peak <= MAX_PEAK_RSS_MIB,
        "fuzz {name}: peak RSS {peak} MiB is over {MAX_PEAK_RSS_MIB} MiB"
    );
}
