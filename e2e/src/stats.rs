//! Summaries the benches print: medians and p99s of measured durations.

use std::time::Duration;

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median and p99 (nearest rank) of `v`, in ms; NaN for no samples.
pub fn median_p99(v: impl IntoIterator<Item = Duration>) -> (f64, f64) {
    let mut s: Vec<f64> = v.into_iter().map(ms).collect();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let rank = |p: f64| s[((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
    (rank(0.5), rank(0.99))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(median_p99(v), (50.0, 99.0));
        let (m, p) = median_p99([Duration::from_millis(7)]);
        assert_eq!((m, p), (7.0, 7.0));
        assert!(median_p99(Vec::new()).0.is_nan());
    }
}
