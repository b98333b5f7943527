//! Latency percentiles (exact: a sorted `Vec` of nanoseconds, 8 bytes a record), rates,
//! and the JSON object of `--json` (flat, numbers only: written by hand).

use std::fmt::Write as _;
use std::time::Duration;

/// Latencies of individual records, in nanoseconds.
#[derive(Debug, Default)]
pub struct Latencies {
    ns: Vec<u64>,
}

/// The summary of [`Latencies`], in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencySummary {
    pub avg_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latencies {
    pub fn with_capacity(n: usize) -> Latencies {
        Latencies {
            ns: Vec::with_capacity(n),
        }
    }

    pub fn push(&mut self, d: Duration) {
        self.ns
            .push(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    pub fn push_ns(&mut self, ns: u64) {
        self.ns.push(ns);
    }

    pub fn extend(&mut self, other: Latencies) {
        self.ns.extend(other.ns);
    }

    pub fn len(&self) -> usize {
        self.ns.len()
    }

    /// Average, nearest-rank percentiles and maximum; `None` without any latency.
    pub fn summary(mut self) -> Option<LatencySummary> {
        if self.ns.is_empty() {
            return None;
        }
        self.ns.sort_unstable();
        let sum: u128 = self.ns.iter().map(|&n| u128::from(n)).sum();
        let ms = |ns: u64| ns as f64 / 1e6;
        Some(LatencySummary {
            avg_ms: sum as f64 / self.ns.len() as f64 / 1e6,
            p50_ms: ms(percentile(&self.ns, 0.50)),
            p99_ms: ms(percentile(&self.ns, 0.99)),
            p999_ms: ms(percentile(&self.ns, 0.999)),
            max_ms: ms(self.ns[self.ns.len() - 1]),
        })
    }
}

/// The nearest-rank `q` quantile of sorted, non-empty values: the smallest value with at
/// least `q` of all values at or below it.
pub fn percentile(sorted: &[u64], q: f64) -> u64 {
    let n = sorted.len();
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
    sorted[rank - 1]
}

/// Records (and their bytes) over a time.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub records: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

impl Rate {
    fn secs(&self) -> f64 {
        // A run too short to time still gets a finite rate.
        self.elapsed.as_secs_f64().max(1e-6)
    }

    pub fn records_per_sec(&self) -> f64 {
        self.records as f64 / self.secs()
    }

    /// MB (1,000,000 bytes) per second.
    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / self.secs() / 1e6
    }
}

/// A flat JSON object of numbers, keys in the order they are added.
#[derive(Debug, Default)]
pub struct Json {
    text: String,
}

impl Json {
    pub fn new() -> Json {
        Json::default()
    }

    fn key(&mut self, key: &str) {
        self.text.push(if self.text.is_empty() { '{' } else { ',' });
        // Keys are this module's own identifiers: nothing to escape.
        let _ = write!(self.text, "\"{key}\":");
    }

    pub fn int(mut self, key: &str, value: u64) -> Json {
        self.key(key);
        let _ = write!(self.text, "{value}");
        self
    }

    /// A number rounded to 3 decimals (microseconds for milliseconds); `null` if it is not
    /// finite (JSON has no NaN or infinity).
    pub fn num(mut self, key: &str, value: f64) -> Json {
        self.key(key);
        let rounded = (value * 1000.0).round() / 1000.0;
        if rounded.is_finite() {
            // f64's Display never uses an exponent: always a valid JSON number.
            let _ = write!(self.text, "{rounded}");
        } else {
            self.text.push_str("null");
        }
        self
    }

    /// `records`, `records_per_sec` and `mb_per_sec`.
    pub fn rate(self, rate: &Rate) -> Json {
        self.int("records", rate.records)
            .num("records_per_sec", rate.records_per_sec())
            .num("mb_per_sec", rate.mb_per_sec())
    }

    /// The `latency_ms_*` keys.
    pub fn latency(self, l: &LatencySummary) -> Json {
        self.num("latency_ms_avg", l.avg_ms)
            .num("latency_ms_p50", l.p50_ms)
            .num("latency_ms_p99", l.p99_ms)
            .num("latency_ms_p999", l.p999_ms)
            .num("latency_ms_max", l.max_ms)
    }

    pub fn finish(mut self) -> String {
        if self.text.is_empty() {
            self.text.push('{');
        }
        self.text.push('}');
        self.text
    }
}

/// `X records/sec (Y MB/sec)`.
pub fn human_rate(rate: &Rate) -> String {
    format!(
        "{:.1} records/sec ({:.2} MB/sec)",
        rate.records_per_sec(),
        rate.mb_per_sec()
    )
}

/// `A ms avg latency, P50 ms 50th, P99 ms 99th, P999 ms 99.9th, M ms max latency`.
pub fn human_latency(l: &LatencySummary) -> String {
    format!(
        "{:.2} ms avg latency, {:.2} ms 50th, {:.2} ms 99th, {:.2} ms 99.9th, \
         {:.2} ms max latency",
        l.avg_ms, l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&v, 0.5), 500);
        assert_eq!(percentile(&v, 0.99), 990);
        assert_eq!(percentile(&v, 0.999), 999);
        assert_eq!(percentile(&v, 1.0), 1000);
        assert_eq!(percentile(&v, 0.0), 1);
        assert_eq!(percentile(&[7], 0.999), 7);
        assert_eq!(percentile(&[1, 2], 0.5), 1);
    }

    #[test]
    fn summary_in_milliseconds() {
        let mut l = Latencies::default();
        assert!(Latencies::default().summary().is_none());
        for ms in [4, 1, 3, 2] {
            l.push(Duration::from_millis(ms));
        }
        l.push_ns(10_000_000);
        let s = l.summary().unwrap();
        assert_eq!(s.avg_ms, 4.0);
        assert_eq!(s.p50_ms, 3.0);
        assert_eq!(s.p99_ms, 10.0);
        assert_eq!(s.max_ms, 10.0);
    }

    #[test]
    fn rates_use_decimal_megabytes() {
        let r = Rate {
            records: 2000,
            bytes: 2_000_000,
            elapsed: Duration::from_millis(500),
        };
        assert_eq!(r.records_per_sec(), 4000.0);
        assert_eq!(r.mb_per_sec(), 4.0);
        assert_eq!(human_rate(&r), "4000.0 records/sec (4.00 MB/sec)");
        let zero = Rate {
            records: 0,
            bytes: 0,
            elapsed: Duration::ZERO,
        };
        assert_eq!(zero.records_per_sec(), 0.0);
    }

    #[test]
    fn json_is_flat_numbers_in_order() {
        let text = Json::new()
            .int("records", 5)
            .num("a", 1.23456)
            .num("b", f64::NAN)
            .num("c", 1e21)
            .finish();
        assert_eq!(
            text,
            "{\"records\":5,\"a\":1.235,\"b\":null,\"c\":1000000000000000000000}"
        );
        assert_eq!(Json::new().finish(), "{}");
    }
}
