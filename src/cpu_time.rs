//! What the server's own stages cost in CPU, from the OS's per-thread clock
//! (`CLOCK_THREAD_CPUTIME_ID`): a stage is charged the CPU its thread used, not the time it
//! spent waiting or the time other threads took from it, so the figure holds however busy the
//! machine is. Recorded in `siglip_cpu_seconds{stage}`, one observation per unit of work;
//! `siglip-serve bench` sets these against the whole process's CPU and the model's.

use std::time::Duration;

use ::metrics::histogram;

use crate::{metrics, telemetry};

/// CPU time the calling thread has used so far.
pub fn thread_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to; this clock exists on every Linux.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if status != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs `work` on this thread and charges its CPU time to `stage` (one of
/// [`metrics::CPU_STAGES`]); in a traced call, `work` is the call's span of that name.
pub fn charged<T>(stage: &'static str, work: impl FnOnce() -> T) -> T {
    let _span = telemetry::stage(stage);
    let start = thread_now();
    let out = work();
    record(stage, thread_now().saturating_sub(start));
    out
}

/// Charges `spent` to `stage`.
pub fn record(stage: &'static str, spent: Duration) {
    histogram!(metrics::CPU, "stage" => stage).record(spent);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_counts_work_not_sleep() {
        let start = thread_now();
        std::thread::sleep(Duration::from_millis(50));
        let slept = thread_now() - start;
        let start = thread_now();
        let mut x = 0u64;
        while thread_now() - start < Duration::from_millis(20) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let worked = thread_now() - start;
        assert!(worked >= Duration::from_millis(20), "{worked:?}");
        assert!(
            slept < worked,
            "sleeping cost {slept:?}, working {worked:?}"
        );
    }
}
