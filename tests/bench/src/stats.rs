//! Percentiles of latency samples.

use std::time::Duration;

use serde::Serialize;

/// p50, p99 and mean of a set of latency samples, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// How many samples.
    pub samples: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile (nearest rank).
    pub p99_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

/// The summary of `samples`, or `None` when there are none.
pub fn summarize(samples: &[Duration]) -> Option<Summary> {
    let ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    summarize_ms(&ms)
}

/// The summary of samples already in milliseconds.
pub fn summarize_ms(samples: &[f64]) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    Some(Summary {
        samples: sorted.len(),
        p50_ms: percentile(&sorted, 50.0),
        p99_ms: percentile(&sorted, 99.0),
        mean_ms: sorted.iter().sum::<f64>() / sorted.len() as f64,
    })
}

/// Nearest-rank percentile of sorted samples: the smallest sample with at least `p`% of the
/// samples at or below it.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = summarize_ms(&samples).unwrap();
        assert_eq!(s.p50_ms, 50.0);
        assert_eq!(s.p99_ms, 99.0);
        assert_eq!(s.mean_ms, 50.5);
        let one = summarize_ms(&[7.0]).unwrap();
        assert_eq!((one.p50_ms, one.p99_ms), (7.0, 7.0));
        assert!(summarize(&[]).is_none());
    }
}
