//! The result of a run: a human summary on stderr and one JSON line on stdout.
//!
//! Stdout carries nothing but the JSON line, so `synchub-load ... > result.json`
//! or `| tail -n1 | jq` works without filtering. The field names are the
//! contract RESULTS.md and scripts rely on: add fields, never rename them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

#[derive(Debug, Serialize, PartialEq)]
pub struct LatencyMs {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    /// Number of latency samples behind the percentiles.
    pub samples: u64,
}

impl LatencyMs {
    /// Percentiles of a histogram recorded in microseconds.
    pub fn from_histogram_us(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Self {
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p999: 0.0,
                max: 0.0,
                samples: 0,
            };
        }
        Self {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            samples: h.len(),
        }
    }
}

/// The JSON result line.
#[derive(Debug, Serialize)]
pub struct RunResult {
    pub scenario: &'static str,
    pub format: &'static str,
    pub connections: u64,
    pub channels: u64,
    /// Offered publishes per second.
    pub rate: u64,
    pub duration_s: u64,
    pub warmup_s: u64,
    /// Publishes the API acknowledged (warmup included).
    pub published: u64,
    pub publish_errors: u64,
    /// Acknowledged publishes per second over the measured window.
    pub achieved_rate: f64,
    /// The achieved rate is within 2% of the offered one; when false the
    /// run did not test the load it names (the publisher or the hub fell behind).
    pub rate_met: bool,
    pub max_publish_lag_ms: f64,
    /// Connections that completed connect and subscribe.
    pub subscribed: u64,
    pub connect_failures: u64,
    pub expected_deliveries: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub unexpected: u64,
    /// Measured-window deliveries per second.
    pub deliveries_per_sec: f64,
    pub latency_ms: LatencyMs,
    pub latency_samples_dropped: u64,
    /// Subscribed connections that the hub closed (or that died) mid-run.
    pub disconnects: u64,
    /// `disconnects` by WebSocket close code; `none` = no close frame.
    pub disconnect_codes: BTreeMap<String, u64>,
    pub unsubscribes: u64,
    pub decode_errors: u64,
    /// CPU seconds the generator itself used (user + system; Linux only).
    pub generator_cpu_s: Option<f64>,
    /// False when the run was interrupted before the schedule ended.
    pub completed: bool,
    /// Completed at the offered rate with no loss, duplicate, error, failure
    /// or disconnect.
    pub ok: bool,
    pub run_id: String,
}

impl RunResult {
    pub fn verdict(&self) -> bool {
        self.completed
            && self.rate_met
            && self.lost == 0
            && self.duplicated == 0
            && self.publish_errors == 0
            && self.connect_failures == 0
            && self.disconnects == 0
            && self.unsubscribes == 0
    }

    pub fn json_line(&self) -> String {
        serde_json::to_string(self).expect("the result holds only plain data")
    }

    /// The human summary; `notes` are extra lines (error samples).
    pub fn human(&self, notes: &[String]) -> String {
        let mut s = String::new();
        let l = &self.latency_ms;
        let _ = writeln!(
            s,
            "fanout ({}) run {}: {} connections over {} channels, {} publishes/s for {} s (+{} s warmup){}",
            self.format,
            self.run_id,
            self.connections,
            self.channels,
            self.rate,
            self.duration_s,
            self.warmup_s,
            if self.completed { "" } else { ", INTERRUPTED" }
        );
        let _ = writeln!(
            s,
            "  connections: {} subscribed, {} failed, {} disconnected mid-run {:?}, {} unsubscribed",
            self.subscribed,
            self.connect_failures,
            self.disconnects,
            self.disconnect_codes,
            self.unsubscribes
        );
        let _ = writeln!(
            s,
            "  publishing:  {} acknowledged, {} errors, achieved {:.1}/s{}, worst lag behind schedule {:.1} ms",
            self.published,
            self.publish_errors,
            self.achieved_rate,
            if self.rate_met {
                ""
            } else {
                " (OFFERED RATE NOT MET)"
            },
            self.max_publish_lag_ms
        );
        let _ = writeln!(
            s,
            "  deliveries:  {} expected, {} delivered, {} lost, {} duplicated, {} unexpected; {:.0}/s",
            self.expected_deliveries,
            self.delivered,
            self.lost,
            self.duplicated,
            self.unexpected,
            self.deliveries_per_sec
        );
        let _ = writeln!(
            s,
            "  latency ms:  p50 {} | p90 {} | p99 {} | p99.9 {} | max {} ({} samples)",
            l.p50, l.p90, l.p99, l.p999, l.max, l.samples
        );
        if let Some(cpu) = self.generator_cpu_s {
            let _ = writeln!(s, "  generator:   {cpu:.1} CPU seconds");
        }
        for note in notes {
            let _ = writeln!(s, "  {note}");
        }
        let _ = write!(
            s,
            "  verdict:     {}",
            if self.ok { "OK" } else { "NOT OK" }
        );
        s
    }
}

/// Whether `achieved` publishes per second count as the offered `rate`.
pub fn rate_met(achieved: f64, rate: u64) -> bool {
    achieved >= rate as f64 * 0.98
}

/// CPU seconds (user + system) this process has used, from `/proc/self/stat`
/// (Linux; `None` elsewhere). Ticks are USER_HZ, 100 on every Linux target.
pub fn own_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the line, the 12th and 13th after the name.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ').skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_reported_in_milliseconds_with_microsecond_precision() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for us in 1..=1000u64 {
            h.record(us * 10).unwrap();
        }
        let l = LatencyMs::from_histogram_us(&h);
        assert_eq!(l.samples, 1000);
        assert!((l.p50 - 5.0).abs() < 0.01, "{l:?}");
        assert!((l.max - 10.0).abs() < 0.01, "{l:?}");
    }

    #[test]
    fn a_run_two_percent_short_of_its_rate_still_counts_and_a_slower_one_does_not() {
        assert!(rate_met(980.0, 1000));
        assert!(!rate_met(979.9, 1000));
        assert!(!rate_met(575.7, 1000));
    }

    #[test]
    fn own_cpu_time_is_readable_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(own_cpu_seconds().is_some());
        }
    }

    #[test]
    fn an_empty_histogram_reports_zeros() {
        let h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        assert_eq!(LatencyMs::from_histogram_us(&h).samples, 0);
    }
}
