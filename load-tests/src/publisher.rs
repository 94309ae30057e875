//! The publishing side: a fixed-rate schedule feeding a bounded pool of HTTP
//! workers that call `POST {api}/api/publish`.
//!
//! The schedule decides when each publish is offered; the pool bounds how
//! many requests are in flight. When every worker is busy the scheduler
//! waits on the bounded job queue (that is the overflow policy), the lag is
//! recorded, and the absolute schedule lets it catch up afterwards, so the
//! report shows both the offered and the achieved rate. A publish counts as
//! acknowledged only on a 2xx answer whose body holds no `error`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::accounting::{AckedSeqs, SeqSpace};
use crate::latency::unix_nanos;
use crate::schedule::Schedule;

/// How often the scheduler wakes to release due publishes. Small against the
/// latencies we measure, large enough not to burn a core on timers.
const TICK: Duration = Duration::from_millis(2);
/// Error messages kept for the summary; the rest are only counted.
const ERROR_SAMPLES: usize = 5;

/// The `data` of every publication: the subscriber reads it back.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct LoadData {
    pub seq: u64,
    /// Send time, Unix nanoseconds.
    pub ts: u64,
}

#[derive(Serialize)]
struct PublishBody<'a> {
    channel: &'a str,
    data: LoadData,
}

/// The parts of a server API answer we look at.
#[derive(Deserialize)]
struct ApiAnswer {
    error: Option<ApiError>,
}

#[derive(Deserialize)]
struct ApiError {
    code: u32,
    #[serde(default)]
    message: String,
}

/// Where and how to publish.
#[derive(Clone)]
pub struct ApiTarget {
    pub client: reqwest::Client,
    pub publish_url: String,
    pub api_key: String,
}

impl ApiTarget {
    pub fn new(api_url: &str, api_key: &str, pool: usize) -> Result<Self> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(pool)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            client,
            publish_url: format!("{}/api/publish", api_url.trim_end_matches('/')),
            api_key: api_key.to_owned(),
        })
    }

    /// One publish; `Ok` only when the hub acknowledged it.
    pub async fn publish(&self, channel: &str, data: LoadData) -> Result<()> {
        let response = self
            .client
            .post(&self.publish_url)
            .header("X-API-Key", &self.api_key)
            .json(&PublishBody { channel, data })
            .send()
            .await
            .with_context(|| format!("POST {}", self.publish_url))?;
        let status = response.status();
        let body = response.bytes().await.context("reading the API answer")?;
        if status == reqwest::StatusCode::UNAUTHORIZED {
            bail!("401 Unauthorized: check --api-key");
        }
        if !status.is_success() {
            bail!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(200)
                    .collect::<String>()
            );
        }
        let answer: ApiAnswer = serde_json::from_slice(&body).with_context(|| {
            format!(
                "API answer is not JSON: {}",
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(200)
                    .collect::<String>()
            )
        })?;
        if let Some(error) = answer.error {
            bail!("API error {}: {}", error.code, error.message);
        }
        Ok(())
    }
}

/// Live counters for the progress bar.
#[derive(Default)]
pub struct PublishCounters {
    pub acked: AtomicU64,
    pub errors: AtomicU64,
}

/// Everything the publishing phase produced.
#[derive(Debug)]
pub struct PublishOutcome {
    pub acked: AckedSeqs,
    pub errors: u64,
    pub error_samples: Vec<String>,
    /// Acknowledged publishes of the measured window.
    pub acked_measured: u64,
    /// From the first measured publish's due time to the last answer.
    pub measured_elapsed: Duration,
    /// Worst delay between a publish's due time and its request going out.
    pub max_lag: Duration,
    /// False when the run was interrupted before the schedule ended.
    pub completed: bool,
}

struct Job {
    seq: u64,
}

#[derive(Default)]
struct WorkerOutcome {
    acked: Option<AckedSeqs>,
    acked_measured: u64,
    errors: u64,
    error_samples: Vec<String>,
    max_lag: Duration,
    last_answer: Option<Instant>,
}

/// Publishes `schedule.total()` messages, seq `n` to `channels[n % len]`.
pub async fn run(
    target: ApiTarget,
    channels: Arc<Vec<String>>,
    space: SeqSpace,
    schedule: Schedule,
    workers: usize,
    counters: Arc<PublishCounters>,
    interrupt: CancellationToken,
) -> Result<PublishOutcome> {
    let workers = workers.max(1);
    let (job_tx, job_rx) = mpsc::channel::<Job>(workers * 2);
    // Workers take turns on one queue; the lock is held only while waiting
    // for the next job, never across a request.
    let job_rx = Arc::new(Mutex::new(job_rx));
    let start = Instant::now();

    let mut pool = JoinSet::new();
    for _ in 0..workers {
        let job_rx = job_rx.clone();
        let target = target.clone();
        let channels = channels.clone();
        let counters = counters.clone();
        pool.spawn(async move {
            let mut out = WorkerOutcome {
                acked: Some(AckedSeqs::new(space.channels)),
                ..WorkerOutcome::default()
            };
            loop {
                let job = { job_rx.lock().await.recv().await };
                let Some(Job { seq }) = job else { break };
                let lag = start.elapsed().saturating_sub(schedule.due_at(seq));
                out.max_lag = out.max_lag.max(lag);
                let channel = space.channel_of(seq);
                let data = LoadData {
                    seq,
                    ts: unix_nanos(),
                };
                let result = target.publish(&channels[channel as usize], data).await;
                out.last_answer = Some(Instant::now());
                match result {
                    Ok(()) => {
                        if let Some(acked) = out.acked.as_mut() {
                            acked.ack(channel, seq);
                        }
                        if space.is_measured(seq) {
                            out.acked_measured += 1;
                        }
                        counters.acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        out.errors += 1;
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                        if out.error_samples.len() < ERROR_SAMPLES {
                            out.error_samples.push(format!("seq {seq}: {e:#}"));
                        }
                    }
                }
            }
            out
        });
    }

    let mut next = 0;
    let mut completed = true;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    'schedule: while next < schedule.total() {
        tokio::select! {
            _ = interrupt.cancelled() => { completed = false; break 'schedule; }
            _ = tick.tick() => {}
        }
        let due = schedule.due_by(start.elapsed());
        while next < due {
            tokio::select! {
                _ = interrupt.cancelled() => { completed = false; break 'schedule; }
                sent = job_tx.send(Job { seq: next }) => {
                    sent.context("every publisher worker stopped")?;
                }
            }
            next += 1;
        }
    }
    drop(job_tx);

    let mut outcome = PublishOutcome {
        acked: AckedSeqs::new(space.channels),
        errors: 0,
        error_samples: Vec::new(),
        acked_measured: 0,
        measured_elapsed: Duration::ZERO,
        max_lag: Duration::ZERO,
        completed,
    };
    let mut last_answer = start;
    while let Some(worker) = pool.join_next().await {
        let worker = worker.context("a publisher worker panicked")?;
        if let Some(acked) = worker.acked {
            outcome.acked.merge(acked);
        }
        outcome.acked_measured += worker.acked_measured;
        outcome.errors += worker.errors;
        outcome.max_lag = outcome.max_lag.max(worker.max_lag);
        for sample in worker.error_samples {
            if outcome.error_samples.len() < ERROR_SAMPLES {
                outcome.error_samples.push(sample);
            }
        }
        if let Some(at) = worker.last_answer {
            last_answer = last_answer.max(at);
        }
    }
    let measured_start = start + schedule.due_at(space.warmup);
    outcome.measured_elapsed = last_answer.saturating_duration_since(measured_start);
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_publish_body_is_the_documented_shape() {
        let body = PublishBody {
            channel: "load_x_3",
            data: LoadData { seq: 12, ts: 34 },
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"channel":"load_x_3","data":{"seq":12,"ts":34}}"#
        );
    }

    #[test]
    fn an_api_error_in_a_200_answer_is_recognised() {
        let answer: ApiAnswer =
            serde_json::from_str(r#"{"error":{"code":102,"message":"unknown channel"}}"#).unwrap();
        assert_eq!(answer.error.unwrap().code, 102);
        let ok: ApiAnswer = serde_json::from_str(r#"{"result":{}}"#).unwrap();
        assert!(ok.error.is_none());
    }
}
