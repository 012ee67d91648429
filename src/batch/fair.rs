//! The queue in front of the inference worker: bounded like a channel, but served by flow in
//! turn rather than first come first served.
//!
//! Every job belongs to a [`Flow`] (a unary call, or one video stream). Each flow has its own
//! FIFO, and a ring holds the flows that have work waiting. The worker takes from the first flow
//! in the ring that is not yet in the batch it is building, and puts that flow at the back of the
//! ring if it still has work. So a fast stream cannot starve a slow one, and a batch takes a
//! second job of a flow only when every flow with a job waiting is already in it: a caller that
//! arrives behind other flows' backlogs waits one round of them, not for the backlogs to drain.
//!
//! The capacity counts jobs over all flows (`--max-queue`), and a flow whose
//! FIFO runs empty is removed, so memory stays bounded by the capacity whatever the number of
//! flows seen.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Condvar, Mutex, MutexGuard, PoisonError,
    },
    time::Instant,
};

/// Which caller a job belongs to: the queue serves flows in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow(u64);

impl Flow {
    /// A flow no one else has (process-wide counter).
    pub fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl Default for Flow {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a job was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// `capacity` jobs are waiting.
    Full,
    /// The queue is closed: no one will take the job.
    Closed,
}

/// How long `pop` waits for a job.
#[derive(Debug, Clone, Copy)]
pub(super) enum Wait {
    /// Until a job comes or the queue closes.
    Block,
    /// Not at all.
    Now,
    /// Until then at the latest.
    Until(Instant),
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Popped<T> {
    Job(Flow, T),
    /// Nothing came in time.
    Empty,
    /// Closed, and nothing is left to take.
    Closed,
}

pub(super) struct FairQueue<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

struct State<T> {
    flows: HashMap<Flow, VecDeque<T>>,
    /// The flows with a job waiting, each once, in the order they are served.
    ring: VecDeque<Flow>,
    len: usize,
    capacity: usize,
    closed: bool,
}

impl<T> FairQueue<T> {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                flows: HashMap::new(),
                ring: VecDeque::new(),
                len: 0,
                capacity,
                closed: false,
            }),
            ready: Condvar::new(),
        }
    }

    /// Queues `job` behind `flow`'s earlier jobs. A flow that had none joins the back of the ring.
    pub(super) fn push(&self, flow: Flow, job: T) -> Result<(), Refused> {
        let mut state = self.lock();
        if state.closed {
            return Err(Refused::Closed);
        }
        if state.len >= state.capacity {
            return Err(Refused::Full);
        }
        let jobs = state.flows.entry(flow).or_default();
        jobs.push_back(job);
        if jobs.len() == 1 {
            state.ring.push_back(flow);
        }
        state.len += 1;
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    /// The next job for a batch that already holds jobs of `in_batch`: the front job of the first
    /// flow in the ring not in `in_batch`, or of the ring's first flow when every waiting flow is
    /// in the batch. Jobs left when the queue closes are still handed out.
    pub(super) fn pop(&self, wait: Wait, in_batch: &HashSet<Flow>) -> Popped<T> {
        let mut state = self.lock();
        loop {
            if let Some((flow, job)) = state.take(in_batch) {
                return Popped::Job(flow, job);
            }
            if state.closed {
                return Popped::Closed;
            }
            state = match wait {
                Wait::Now => return Popped::Empty,
                Wait::Block => self
                    .ready
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
                Wait::Until(at) => {
                    let left = at.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Popped::Empty;
                    }
                    self.ready
                        .wait_timeout(state, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    /// No more jobs are accepted; a `pop` waiting on an empty queue returns `Closed`.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// Closes the queue and hands back the jobs left in it, for a consumer that stops taking
    /// them (dropping them answers their callers).
    pub(super) fn abandon(&self) -> Vec<T> {
        let mut state = self.lock();
        state.closed = true;
        state.ring.clear();
        state.len = 0;
        let left = state.flows.drain().flat_map(|(_, jobs)| jobs).collect();
        drop(state);
        self.ready.notify_all();
        left
    }

    /// Jobs waiting, and flows they belong to.
    #[cfg(test)]
    fn sizes(&self) -> (usize, usize) {
        let state = self.lock();
        (state.len, state.flows.len())
    }

    /// The state stays consistent under any panic elsewhere (every change is made in full
    /// before the lock is released), so a poisoned lock is used as is.
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T> State<T> {
    fn take(&mut self, in_batch: &HashSet<Flow>) -> Option<(Flow, T)> {
        let at = self
            .ring
            .iter()
            .position(|flow| !in_batch.contains(flow))
            .unwrap_or(0);
        let flow = self.ring.remove(at)?;
        let jobs = self
            .flows
            .get_mut(&flow)
            .expect("a flow in the ring has jobs");
        let job = jobs.pop_front().expect("a flow in the ring has jobs");
        if jobs.is_empty() {
            self.flows.remove(&flow);
        } else {
            self.ring.push_back(flow);
        }
        self.len -= 1;
        Some((flow, job))
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, thread};

    use super::*;

    /// Pops without waiting until the queue is empty, `batch` jobs per batch (a fresh `in_batch`
    /// for each): the (flow index, job) order, batch by batch.
    fn drain(queue: &FairQueue<(usize, u32)>, batch: usize) -> Vec<Vec<(usize, u32)>> {
        let mut batches = Vec::new();
        loop {
            let mut in_batch = HashSet::new();
            let mut jobs = Vec::new();
            while jobs.len() < batch {
                match queue.pop(Wait::Now, &in_batch) {
                    Popped::Job(flow, job) => {
                        in_batch.insert(flow);
                        jobs.push(job);
                    }
                    Popped::Empty => break,
                    Popped::Closed => unreachable!("not closed"),
                }
            }
            if jobs.is_empty() {
                return batches;
            }
            batches.push(jobs);
        }
    }

    /// Queues `counts[i]` jobs for flow i, all of flow 0 first, then flow 1, and so on (the
    /// order a FIFO would serve).
    fn queue_of(counts: &[u32]) -> FairQueue<(usize, u32)> {
        let queue = FairQueue::new(1000);
        let flows: Vec<Flow> = counts.iter().map(|_| Flow::new()).collect();
        for (i, &n) in counts.iter().enumerate() {
            for j in 0..n {
                queue.push(flows[i], (i, j)).unwrap();
            }
        }
        queue
    }

    #[test]
    fn flows_are_served_in_turn_each_in_its_own_order() {
        let queue = queue_of(&[3, 1, 2]);
        let order: Vec<_> = drain(&queue, 1).concat();
        assert_eq!(
            order,
            [(0, 0), (1, 0), (2, 0), (0, 1), (2, 1), (0, 2)],
            "round robin over the flows, FIFO within each"
        );
    }

    #[test]
    fn a_batch_takes_a_second_job_of_a_flow_only_when_every_waiting_flow_is_in_it() {
        for (counts, batch) in [
            (vec![4, 1], 2),
            (vec![5, 2, 1], 2),
            (vec![5, 2, 1], 4),
            (vec![1, 1, 6], 3),
            (vec![3, 3, 3, 3], 3),
        ] {
            let queue = queue_of(&counts);
            let mut left = counts.clone();
            for jobs in drain(&queue, batch) {
                // The flows with a job waiting when this batch began.
                let waiting = left.iter().filter(|&&n| n > 0).count();
                let mut seen = vec![0; counts.len()];
                for (position, &(flow, _)) in jobs.iter().enumerate() {
                    if seen[flow] > 0 {
                        let distinct = seen.iter().filter(|&&n| n > 0).count();
                        assert_eq!(
                            distinct, waiting,
                            "{counts:?} batch {batch}: job {position} repeats flow {flow} while another flow waits: {jobs:?}"
                        );
                    }
                    seen[flow] += 1;
                    left[flow] -= 1;
                }
            }
            assert!(left.iter().all(|&n| n == 0), "every job served once");
        }
    }

    #[test]
    fn a_waiting_flow_joins_the_first_batch_before_a_second_job_of_another() {
        // What FIFO gets wrong: 4 jobs of A queued before B's one.
        let queue = queue_of(&[4, 1]);
        assert_eq!(
            drain(&queue, 2),
            [vec![(0, 0), (1, 0)], vec![(0, 1), (0, 2)], vec![(0, 3)]]
        );
    }

    #[test]
    fn a_full_queue_refuses_and_takes_again_once_a_job_left() {
        let queue = FairQueue::new(2);
        let (a, b) = (Flow::new(), Flow::new());
        queue.push(a, 1).unwrap();
        queue.push(b, 2).unwrap();
        assert_eq!(queue.push(a, 3), Err(Refused::Full));
        assert_eq!(queue.push(Flow::new(), 3), Err(Refused::Full));
        assert_eq!(queue.pop(Wait::Now, &HashSet::new()), Popped::Job(a, 1));
        queue.push(b, 3).unwrap();
        assert_eq!(queue.sizes(), (2, 1));
    }

    #[test]
    fn the_flow_map_is_empty_again_after_draining() {
        let queue = queue_of(&[3, 1, 2, 7]);
        assert_eq!(queue.sizes(), (13, 4));
        assert_eq!(drain(&queue, 3).concat().len(), 13);
        assert_eq!(queue.sizes(), (0, 0));
        assert!(queue.lock().ring.is_empty());
        // Many one-job flows (unary calls) leave nothing behind either.
        for i in 0..100 {
            queue.push(Flow::new(), (i, 0)).unwrap();
            assert!(matches!(
                queue.pop(Wait::Now, &HashSet::new()),
                Popped::Job(..)
            ));
        }
        assert_eq!(queue.sizes(), (0, 0));
    }

    #[test]
    fn closing_ends_a_blocked_pop_after_the_last_job() {
        let queue = Arc::new(FairQueue::new(4));
        let flow = Flow::new();
        queue.push(flow, 7).unwrap();
        let consumer = {
            let queue = Arc::clone(&queue);
            thread::spawn(move || {
                let none = HashSet::new();
                (queue.pop(Wait::Block, &none), queue.pop(Wait::Block, &none))
            })
        };
        // Once the consumer has the job it is on its way into (or already in) a pop that blocks
        // on an empty queue: closing must end it, whichever comes first.
        while queue.sizes() != (0, 0) {
            thread::yield_now();
        }
        queue.close();
        assert_eq!(queue.push(flow, 8), Err(Refused::Closed));
        assert_eq!(
            consumer.join().unwrap(),
            (Popped::Job(flow, 7), Popped::Closed)
        );
    }

    #[test]
    fn jobs_queued_before_the_close_are_still_handed_out() {
        let queue = queue_of(&[1, 1]);
        queue.close();
        let none = HashSet::new();
        assert!(matches!(
            queue.pop(Wait::Block, &none),
            Popped::Job(_, (0, 0))
        ));
        assert!(matches!(
            queue.pop(Wait::Block, &none),
            Popped::Job(_, (1, 0))
        ));
        assert_eq!(queue.pop(Wait::Block, &none), Popped::Closed);
    }

    #[test]
    fn an_abandoned_queue_hands_back_its_jobs_and_refuses_more() {
        let queue = queue_of(&[2, 1]);
        let mut left = queue.abandon();
        left.sort();
        assert_eq!(left, [(0, 0), (0, 1), (1, 0)]);
        assert_eq!(queue.sizes(), (0, 0));
        assert_eq!(queue.push(Flow::new(), (9, 9)), Err(Refused::Closed));
        assert_eq!(queue.pop(Wait::Block, &HashSet::new()), Popped::Closed);
    }

    #[test]
    fn a_timed_pop_on_an_empty_queue_returns_empty() {
        let queue = FairQueue::<u32>::new(1);
        let none = HashSet::new();
        assert_eq!(queue.pop(Wait::Now, &none), Popped::Empty);
        assert_eq!(queue.pop(Wait::Until(Instant::now()), &none), Popped::Empty);
    }
}
