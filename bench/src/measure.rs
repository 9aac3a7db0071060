//! Running operations from concurrent workers and reporting throughput and latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Throughput and latency of one run.
#[derive(Debug)]
pub struct Measurement {
    pub ops: usize,
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
}

impl Measurement {
    pub fn per_second(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    pub fn ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }
}

/// Runs `count` operations from `concurrency` workers; `op(i)` does the i-th.
pub async fn measure<F, Fut>(count: usize, concurrency: usize, op: F) -> anyhow::Result<Measurement>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    measure_paced(count, concurrency, 0, op).await
}

/// As [`measure`], starting the i-th operation no sooner than `i / rate` seconds
/// in (0: no pacing); latency counts from when an operation starts.
pub async fn measure_paced<F, Fut>(
    count: usize,
    concurrency: usize,
    rate: u64,
    op: F,
) -> anyhow::Result<Measurement>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let paced_from = tokio::time::Instant::now();
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let op = op.clone();
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return anyhow::Ok(latency);
                }
                if rate > 0 {
                    let due = paced_from + Duration::from_secs_f64(i as f64 / rate as f64);
                    tokio::time::sleep_until(due).await;
                }
                let began = Instant::now();
                op(i).await?;
                latency.saturating_record(began.elapsed().as_micros() as u64);
            }
        }));
    }
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for worker in workers {
        latency.add(worker.await??)?;
    }
    Ok(Measurement {
        ops: count,
        elapsed: start.elapsed(),
        latency,
    })
}

pub fn report(name: &str, concurrency: usize, m: &Measurement, baseline: Option<&Measurement>) {
    let ratio = baseline.map_or(String::new(), |b| {
        format!("  {:.2}x raw", m.per_second() / b.per_second())
    });
    println!(
        "{name:<22} {concurrency:>5} {:>8} {:>10.0} {:>8.2} {:>8.2}{ratio}",
        m.ops,
        m.per_second(),
        m.ms(0.5),
        m.ms(0.99),
    );
}

/// Prints the table header.
pub fn header(what: &str) {
    println!(
        "{:<22} {:>5} {:>8} {:>10} {:>8} {:>8}",
        "backend", "conc", what, "per sec", "p50 ms", "p99 ms"
    );
}

/// The resident memory of process `pid` (or `self`), from `/proc`; 0 if unknown.
pub fn rss_of(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
