//! `fhir-export bench --latency`: a small export's time while a large one runs.
//!
//! For each size, one server runs a small export (`_type=Organization`, one chunk) alone, then
//! again while a system export of the whole dataset is under way (started first, and given
//! 100 ms to fill the queue with its chunks). The queue takes turns between exports, so the
//! small one waits for a worker to finish the chunk it is on, not for the large export.
//! Medians of the rounds.

use std::time::{Duration, Instant};

use super::{BenchArgs, BenchError, Server, dataset, median, run_request};

/// The small export is timed to the millisecond; the large one's poller stays out of its way.
const POLL_SMALL: Duration = Duration::from_millis(1);
const POLL_LARGE: Duration = Duration::from_millis(20);

pub(super) async fn run(args: &BenchArgs) -> Result<(), BenchError> {
    for size in &args.sizes {
        let data = args.dir.join(format!("data-{size}"));
        let (resources, _) = dataset(&data, *size).await?;
        let server = Server::start(args, &data, &[]).await?;
        let small = format!("{}/$export?_type=Organization", server.base);
        let large = format!("{}/$export", server.base);
        if !args.cold {
            run_request(&server.http, server.http.get(&large), POLL_LARGE).await?;
        }
        let mut alone = Vec::new();
        let mut beside = Vec::new();
        let mut large_times = Vec::new();
        let mut small_share = Vec::new();
        for _ in 0..args.rounds {
            let (t, _) = run_request(&server.http, server.http.get(&small), POLL_SMALL).await?;
            alone.push(t);
            let http = server.http.clone();
            let url = large.clone();
            let started = Instant::now();
            let big =
                tokio::spawn(async move { run_request(&http, http.get(&url), POLL_LARGE).await });
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (t, _) = run_request(&server.http, server.http.get(&small), POLL_SMALL).await?;
            let small_done = started.elapsed().as_secs_f64();
            beside.push(t);
            let (large_t, _) = big
                .await
                .map_err(|e| BenchError::Protocol(e.to_string()))??;
            large_times.push(large_t);
            small_share.push(small_done / large_t);
        }
        server.stop().await?;
        let (a, b, l) = (median(alone), median(beside), median(large_times));
        println!(
            "{resources} resources, {} workers, {} rounds (medians): small export alone {:.1} ms; while a large one runs {:.1} ms ({:.1}x); the large export {:.3} s, and the small one was done {:.0}% of the way through it",
            args.workers,
            args.rounds,
            a * 1000.0,
            b * 1000.0,
            b / a,
            l,
            100.0 * median(small_share)
        );
    }
    Ok(())
}
