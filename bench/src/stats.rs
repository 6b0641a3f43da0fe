//! Summary statistics over the samples of one metric: median, min and max, and the
//! petrel/peer ratio of paired runs.

use serde::Serialize;

/// Median, minimum and maximum of a set of samples (all samples are kept).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Every sample, in run order.
    pub samples: Vec<f64>,
    /// Middle value (mean of the two middle values for an even count).
    pub median: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
}

impl Summary {
    /// Summarises `samples`; `None` when there are none (or any is NaN).
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() || samples.iter().any(|s| s.is_nan()) {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Summary {
            samples: samples.to_vec(),
            median,
            min: sorted[0],
            max: sorted[n - 1],
        })
    }
}

/// `a[i] / b[i]` for every index where both are present and `b[i]` is not zero.
pub fn paired_ratios(a: &[Option<f64>], b: &[Option<f64>]) -> Vec<f64> {
    a.iter()
        .zip(b)
        .filter_map(|(x, y)| match (x, y) {
            (Some(x), Some(y)) if *y != 0.0 => Some(x / y),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_count_is_middle() {
        let s = Summary::of(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!(s.median, 3.0);
        assert_eq!(s.min, 1.0);
        assert_eq!(s.max, 5.0);
        assert_eq!(s.samples, vec![5.0, 1.0, 3.0], "samples keep run order");
    }

    #[test]
    fn median_of_even_count_is_mean_of_middle_two() {
        let s = Summary::of(&[4.0, 1.0, 10.0, 2.0]).unwrap();
        assert_eq!(s.median, 3.0);
        assert_eq!(s.min, 1.0);
        assert_eq!(s.max, 10.0);
    }

    #[test]
    fn single_sample() {
        let s = Summary::of(&[7.5]).unwrap();
        assert_eq!((s.median, s.min, s.max), (7.5, 7.5, 7.5));
    }

    #[test]
    fn empty_or_nan_has_no_summary() {
        assert!(Summary::of(&[]).is_none());
        assert!(Summary::of(&[1.0, f64::NAN]).is_none());
    }

    #[test]
    fn ratios_skip_missing_and_zero() {
        let a = [Some(2.0), None, Some(3.0), Some(1.0)];
        let b = [Some(4.0), Some(1.0), Some(0.0), Some(2.0)];
        assert_eq!(paired_ratios(&a, &b), vec![0.5, 0.5]);
    }
}
