//! The task-local meter that requests and bytes are counted on while a message is handled.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::Usage;

tokio::task_local! {
    static CURRENT: Meter;
}

/// Counts what the code running in [`Meter::measure`] uses. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct Meter {
    usage: Arc<Mutex<Usage>>,
}

impl Meter {
    /// Runs `work` with this meter current, and adds one message with its wall and CPU time.
    pub async fn measure<F: Future>(&self, work: F) -> F::Output {
        let (started, cpu) = (Instant::now(), cpu_time());
        let out = CURRENT.scope(self.clone(), work).await;
        let wall_ms = millis(started.elapsed());
        let cpu_ms = millis(cpu_time().saturating_sub(cpu));
        self.with(|u| {
            u.messages += 1;
            u.wall_ms += wall_ms;
            u.max_wall_ms = u.max_wall_ms.max(wall_ms);
            u.cpu_ms += cpu_ms;
            u.max_cpu_ms = u.max_cpu_ms.max(cpu_ms);
        });
        out
    }

    /// What was counted so far.
    pub fn snapshot(&self) -> Usage {
        self.usage
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn with(&self, f: impl FnOnce(&mut Usage)) {
        f(&mut self.usage.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Runs `f` on the current task's meter, if there is one (outside a measured message,
    /// nothing is counted).
    pub fn current(f: impl FnOnce(&mut Usage)) {
        let _ = CURRENT.try_with(|m| m.with(f));
    }

    /// The current task's meter, to carry into a spawned task.
    pub fn current_meter() -> Option<Meter> {
        CURRENT.try_with(Meter::clone).ok()
    }

    /// Runs `work` on this meter without counting a message: a task spawned by measured work.
    pub async fn inside<F: Future>(&self, work: F) -> F::Output {
        CURRENT.scope(self.clone(), work).await
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// CPU time of this process (all threads, user + system).
pub fn cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_only_inside_the_measured_work() {
        Meter::current(|u| u.count(super::super::S3, "GetObject", 1));
        let meter = Meter::default();
        meter
            .measure(async {
                Meter::current(|u| u.count(super::super::S3, "PutObject", 1));
                // CPU that the meter must see.
                let mut x = 0u64;
                for i in 0..20_000_000u64 {
                    x = x.wrapping_add(i * i);
                }
                std::hint::black_box(x);
            })
            .await;
        let u = meter.snapshot();
        assert_eq!(u.messages, 1);
        assert_eq!(u.requests_of(super::super::S3, "PutObject"), 1);
        assert_eq!(u.requests_of(super::super::S3, "GetObject"), 0);
        assert!(u.cpu_ms >= 1, "{u:?}");
        assert!(u.wall_ms >= u.max_wall_ms.min(u.wall_ms));
    }
}
