//! Health follows the device. The inference worker counts consecutive failed batches (see
//! `batch`) and publishes the count on a `watch`; [`follow`] turns it into what the health service
//! reports and, past a limit, into the decision to exit.
//!
//! A persistent device fault (an out-of-memory that keeps happening, a device-side assert, an Xid
//! error) makes every pass fail while the process looks alive. Readiness then says NOT_SERVING,
//! so that Kubernetes sends traffic to other replicas, but calls are still accepted: the next
//! pass that succeeds is the only way to learn that the device has recovered. If it never does,
//! the process exits non-zero and Kubernetes replaces the pod.

use tokio::sync::watch;

/// When consecutive failed batches change health (`--unhealthy-after-failures`,
/// `--exit-after-failures`; 0 turns either off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    pub unhealthy_after: u32,
    pub exit_after: u32,
}

/// What `failures` consecutive failed batches mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Serving,
    NotServing,
    Exit,
}

impl HealthPolicy {
    pub fn verdict(&self, failures: u32) -> Verdict {
        let reached = |limit: u32| limit > 0 && failures >= limit;
        if reached(self.exit_after) {
            Verdict::Exit
        } else if reached(self.unhealthy_after) {
            Verdict::NotServing
        } else {
            Verdict::Serving
        }
    }
}

/// Follows the worker's count of consecutive failed batches: calls `report(false)` when it
/// reaches the policy's limit, `report(true)` when a success resets it, and returns the reason to
/// exit once it reaches the exit limit. Never returns while the count stays below that (nor after
/// the worker has stopped: the server is shutting down then).
pub async fn follow(
    mut failures: watch::Receiver<u32>,
    policy: HealthPolicy,
    mut report: impl FnMut(bool),
) -> anyhow::Error {
    let mut serving = true;
    loop {
        // A batch fails in milliseconds on a broken device: counts can be skipped here, but the
        // verdict only needs the latest.
        let count = *failures.borrow_and_update();
        match policy.verdict(count) {
            Verdict::Exit => {
                return anyhow::anyhow!(
                    "{count} consecutive inference batches failed (--exit-after-failures {}): the \
                     device looks broken; exiting so that the orchestrator replaces this process",
                    policy.exit_after
                )
            }
            Verdict::NotServing if serving => {
                serving = false;
                tracing::error!(
                    consecutive_failures = count,
                    "inference keeps failing (--unhealthy-after-failures {}): health NOT_SERVING; \
                     calls are still accepted, and the next success makes it SERVING again",
                    policy.unhealthy_after
                );
                report(false);
            }
            Verdict::Serving if !serving => {
                serving = true;
                report(true);
                tracing::info!("inference succeeded again: health SERVING");
            }
            _ => {}
        }
        if failures.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{HealthPolicy, Verdict};

    #[test]
    fn the_verdict_follows_the_limits_and_zero_turns_a_limit_off() {
        let policy = HealthPolicy {
            unhealthy_after: 3,
            exit_after: 20,
        };
        let verdicts: Vec<Verdict> = [0, 2, 3, 19, 20, 50]
            .into_iter()
            .map(|n| policy.verdict(n))
            .collect();
        use Verdict::*;
        assert_eq!(
            verdicts,
            [Serving, Serving, NotServing, NotServing, Exit, Exit]
        );
        let never = HealthPolicy {
            unhealthy_after: 0,
            exit_after: 0,
        };
        assert_eq!(never.verdict(u32::MAX), Serving);
    }
}
