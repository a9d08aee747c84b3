//! Waiting for a condition instead of sleeping "long enough": every wait in the tests polls,
//! and a timeout says what it last saw.

use std::thread;
use std::time::{Duration, Instant};

/// Calls `check` until it returns `Ok`, at growing intervals (100 ms to 500 ms). On timeout
/// the error names `what` and the last `Err` the check gave (what it saw instead).
pub fn try_poll<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> Result<(T, Duration), String> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(100);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match check() {
            Ok(v) => return Ok((v, start.elapsed())),
            Err(last) => {
                if start.elapsed() >= timeout {
                    return Err(format!(
                        "timed out after {:.1} s ({attempts} attempts) waiting for {what}; last seen: {last}",
                        start.elapsed().as_secs_f64()
                    ));
                }
            }
        }
        thread::sleep(pause.min(timeout.saturating_sub(start.elapsed())));
        pause = (pause * 3 / 2).min(Duration::from_millis(500));
    }
}

/// [`try_poll`] that fails the test on timeout; returns the value and how long it took.
#[track_caller]
pub fn poll<T>(
    what: &str,
    timeout: Duration,
    check: impl FnMut() -> Result<T, String>,
) -> (T, Duration) {
    match try_poll(what, timeout, check) {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_the_last_thing_seen() {
        let mut n = 0;
        let e = try_poll::<()>("n to reach 100", Duration::from_millis(350), || {
            n += 1;
            Err(format!("n = {n}"))
        })
        .unwrap_err();
        assert!(e.contains("waiting for n to reach 100"), "{e}");
        assert!(e.contains(&format!("last seen: n = {n}")), "{e}");
    }

    #[test]
    fn returns_the_value() {
        let mut n = 0;
        let (v, _) = poll("n to reach 3", secs(10), || {
            n += 1;
            if n >= 3 {
                Ok(n)
            } else {
                Err(format!("n = {n}"))
            }
        });
        assert_eq!(v, 3);
    }
}
