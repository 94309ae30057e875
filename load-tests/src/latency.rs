//! End-to-end latency: one HdrHistogram fed by every connection in batches.
//!
//! A histogram per connection would cost ~180 KB each at three significant
//! digits (hundreds of MB for thousands of connections), and a shared one
//! would put a lock on every delivery. Instead each connection buffers its
//! samples and hands over a batch every few hundred deliveries or
//! milliseconds through a bounded queue; one aggregator task owns the
//! histogram. The aggregator never waits on a connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

/// Highest latency the histogram resolves (1 hour in microseconds); larger
/// samples are clamped to it.
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// A connection hands over its samples at this many...
const BATCH_SAMPLES: usize = 256;
/// ...or after this long, so the progress bar stays live.
const BATCH_AGE: Duration = Duration::from_millis(250);
/// If the aggregator is behind, a connection keeps at most this many samples
/// before dropping (and counting) new ones rather than growing without bound.
const MAX_BUFFERED_SAMPLES: usize = 1 << 20;

/// Nanoseconds since the Unix epoch: the clock both sides of a measurement
/// share (publisher and subscribers live in this one process).
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Latency samples (microseconds) from one connection.
#[derive(Debug, Default)]
pub struct LatencyBatch {
    pub samples_us: Vec<u32>,
    /// First copies received since the last batch, warmup included (for progress).
    pub deliveries: u64,
    /// Samples dropped because the aggregator was behind.
    pub dropped: u64,
}

/// A connection's side of the queue.
pub struct LatencyRecorder {
    tx: mpsc::Sender<LatencyBatch>,
    batch: LatencyBatch,
    since: Instant,
}

impl LatencyRecorder {
    pub fn new(tx: mpsc::Sender<LatencyBatch>) -> Self {
        Self {
            tx,
            batch: LatencyBatch::default(),
            since: Instant::now(),
        }
    }

    /// Counts a first delivery and, when measured, its latency.
    pub fn delivered(&mut self, latency_ns: Option<u64>) {
        self.batch.deliveries += 1;
        if let Some(ns) = latency_ns {
            if self.batch.samples_us.len() >= MAX_BUFFERED_SAMPLES {
                self.batch.dropped += 1;
            } else {
                let us = (ns / 1000).clamp(1, u64::from(u32::MAX));
                self.batch.samples_us.push(us as u32);
            }
        }
    }

    /// Hands the batch over if it is big or old enough. Overflow policy: a full
    /// queue leaves the batch with the connection to retry later.
    pub fn maybe_flush(&mut self) {
        let due = self.batch.samples_us.len() >= BATCH_SAMPLES
            || (self.batch.deliveries > 0 && self.since.elapsed() >= BATCH_AGE);
        if !due {
            return;
        }
        match self.tx.try_send(std::mem::take(&mut self.batch)) {
            Ok(()) => self.since = Instant::now(),
            Err(TrySendError::Full(batch) | TrySendError::Closed(batch)) => self.batch = batch,
        }
    }

    /// Hands over whatever is left, waiting for room: the connection is done.
    pub async fn finish(mut self) {
        if self.batch.deliveries > 0 || self.batch.dropped > 0 {
            let batch = std::mem::take(&mut self.batch);
            // A closed queue means the run is being torn down; nothing to keep.
            let _ = self.tx.send(batch).await;
        }
    }
}

/// What the aggregator hands back once every connection is done.
pub struct LatencySummary {
    pub histogram: Histogram<u64>,
    pub dropped: u64,
}

/// Runs until every `LatencyRecorder` is dropped. `delivered` is the live
/// count for the progress bar.
pub async fn aggregate(
    mut rx: mpsc::Receiver<LatencyBatch>,
    delivered: Arc<AtomicU64>,
) -> LatencySummary {
    let mut histogram = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3)
        .expect("static histogram bounds are valid");
    let mut dropped = 0;
    while let Some(batch) = rx.recv().await {
        for us in batch.samples_us {
            histogram.saturating_record(u64::from(us));
        }
        dropped += batch.dropped;
        delivered.fetch_add(batch.deliveries, Ordering::Relaxed);
    }
    LatencySummary { histogram, dropped }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn samples_from_many_recorders_end_up_in_one_histogram() {
        let (tx, rx) = mpsc::channel(4);
        let delivered = Arc::new(AtomicU64::new(0));
        let agg = tokio::spawn(aggregate(rx, delivered.clone()));
        for k in 0..10u64 {
            let mut r = LatencyRecorder::new(tx.clone());
            for i in 0..1000u64 {
                // Warmup deliveries count for progress but carry no latency.
                let latency = (i >= 100).then_some((k * 1000 + i) * 1000);
                r.delivered(latency);
                r.maybe_flush();
            }
            r.finish().await;
        }
        drop(tx);
        let summary = agg.await.unwrap();
        assert_eq!(summary.histogram.len(), 10 * 900);
        assert_eq!(delivered.load(Ordering::Relaxed), 10 * 1000);
        assert_eq!(summary.dropped, 0);
        assert_eq!(
            summary.histogram.max(),
            summary.histogram.highest_equivalent(9999)
        );
    }

    #[tokio::test]
    async fn a_full_queue_keeps_the_batch_with_the_connection() {
        let (tx, mut rx) = mpsc::channel(1);
        let mut r = LatencyRecorder::new(tx);
        for _ in 0..BATCH_SAMPLES {
            r.delivered(Some(5_000));
        }
        r.maybe_flush();
        for _ in 0..BATCH_SAMPLES {
            r.delivered(Some(5_000));
        }
        r.maybe_flush(); // queue full: kept, not lost
        assert_eq!(r.batch.samples_us.len(), BATCH_SAMPLES);
        assert_eq!(rx.recv().await.unwrap().samples_us.len(), BATCH_SAMPLES);
        r.finish().await;
        assert_eq!(rx.recv().await.unwrap().samples_us.len(), BATCH_SAMPLES);
    }

    #[test]
    fn a_sub_microsecond_latency_is_recorded_as_one_microsecond() {
        let (tx, _rx) = mpsc::channel(1);
        let mut r = LatencyRecorder::new(tx);
        r.delivered(Some(10));
        assert_eq!(r.batch.samples_us, vec![1]);
    }
}
