//! From a batch's passes back to its callers: a pass that ran out of memory is run again in
//! halves, down to single rows, so that only the rows that fail even alone get the error; then
//! each caller gets its own rows, in queue order.

use ::metrics::{counter, histogram};
use std::time::Duration;

use super::job::Job;
use super::worker::Worker;
use super::Reply;
use crate::error::{Error, Result};
use crate::metrics;
use crate::model::{runtime::is_out_of_memory, scores::Embeddings};

/// Consecutive rows of a batch that share one outcome: a pass, or part of one that was run again
/// after running out of memory.
pub(super) struct Settled {
    pub(super) rows: usize,
    pub(super) result: Result<Embeddings>,
}

impl Worker {
    /// The outcome of a pass over `rows` that gave `result`. Out of memory, it is run again in
    /// two halves (each of which may split again), so that a batch too large for the device
    /// still gets answered, and a row that fails even alone fails only its own caller. Any other
    /// error is final: a device-side assert or a lost device does not get better with smaller
    /// batches.
    pub(super) fn settle<T>(
        &self,
        tower: &'static str,
        rows: &[T],
        result: Result<Embeddings>,
        embed: &impl Fn(&[T]) -> Result<Embeddings>,
    ) -> Vec<Settled> {
        match result {
            Err(e) if is_out_of_memory(&e) && rows.len() > 1 => {
                counter!(metrics::INFERENCE_FAILURES, "tower" => tower, "reason" => "out_of_memory", "model" => self.model_label())
                    .increment(1);
                tracing::warn!(
                    tower,
                    rows = rows.len(),
                    error = %e,
                    "a forward pass ran out of memory; running it again in halves"
                );
                let (first, second) = rows.split_at(rows.len() / 2);
                let mut runs = self.settle(tower, first, embed(first), embed);
                runs.extend(self.settle(tower, second, embed(second), embed));
                runs
            }
            result => {
                if let Err(e) = &result {
                    let reason = if is_out_of_memory(e) {
                        "out_of_memory"
                    } else {
                        "error"
                    };
                    counter!(metrics::INFERENCE_FAILURES, "tower" => tower, "reason" => reason, "model" => self.model_label())
                        .increment(1);
                    tracing::error!(tower, rows = rows.len(), error = %e, "inference failed");
                }
                vec![Settled {
                    rows: rows.len(),
                    result,
                }]
            }
        }
    }

    /// Hands each job its own rows, in queue order: a job gets an error if any of its rows
    /// failed. `passes`: the rows of each pass the batch was run in, in order.
    pub(super) fn answer(
        &self,
        jobs: Vec<Job>,
        runs: Vec<Settled>,
        passes: &[usize],
        inference: Duration,
    ) {
        self.record(runs.iter().any(|run| run.result.is_ok()));
        let sizes = pass_sizes(&jobs.iter().map(Job::rows).collect::<Vec<_>>(), passes);
        let mut rows = RowCursor::new(&runs);
        for (job, batch_size) in jobs.into_iter().zip(sizes) {
            let queue = job.enqueued.elapsed().saturating_sub(inference);
            histogram!(metrics::QUEUE_WAIT, "model" => self.model_label()).record(queue);
            let reply = rows.take(job.rows()).map(|embeddings| Reply {
                embeddings,
                queue,
                inference,
                batch_size,
            });
            // Its inference ends before its caller hears of it (and its call's span can end).
            drop(job.stage);
            let _ = job.reply.send(reply);
        }
    }
}

/// For each job of `rows` rows, the rows of the largest pass its rows ran in (`passes`: each
/// pass's rows, in order; the jobs' rows fill them in order).
fn pass_sizes(rows: &[usize], passes: &[usize]) -> Vec<usize> {
    let mut passes = passes.iter().copied();
    let (mut current, mut left) = (0, 0);
    rows.iter()
        .map(|&rows| {
            let (mut rows, mut largest) = (rows, 0);
            while rows > 0 {
                if left == 0 {
                    let Some(next) = passes.next() else { break };
                    (current, left) = (next, next);
                }
                let take = rows.min(left);
                (rows, left, largest) = (rows - take, left - take, largest.max(current));
            }
            largest
        })
        .collect()
}

/// Walks a batch's runs, one caller's rows at a time.
struct RowCursor<'a> {
    runs: &'a [Settled],
    run: usize,
    /// Rows of `runs[run]` already handed out.
    offset: usize,
}

impl<'a> RowCursor<'a> {
    fn new(runs: &'a [Settled]) -> Self {
        Self {
            runs,
            run: 0,
            offset: 0,
        }
    }

    /// The next `n` rows' embeddings, or the error of the first run among them that failed.
    fn take(&mut self, mut n: usize) -> Result<Embeddings> {
        let mut data = Vec::new();
        let mut dim = 0;
        let mut error = None;
        while n > 0 {
            let Some(run) = self.runs.get(self.run) else {
                return Err(Error::Inference(
                    "the batch's passes returned fewer rows than it holds".into(),
                ));
            };
            let take = (run.rows - self.offset).min(n);
            match &run.result {
                Ok(e) => {
                    dim = e.dim;
                    data.extend_from_slice(
                        &e.data[self.offset * e.dim..(self.offset + take) * e.dim],
                    );
                }
                Err(e) => {
                    error.get_or_insert_with(|| match e {
                        Error::Inference(m) => m.clone(),
                        other => other.to_string(),
                    });
                }
            }
            self.offset += take;
            n -= take;
            if self.offset == run.rows {
                self.run += 1;
                self.offset = 0;
            }
        }
        match error {
            Some(message) => Err(Error::Inference(message)),
            None => Ok(Embeddings::new(dim, data)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pass_sizes;

    #[test]
    fn each_job_is_told_the_largest_pass_its_rows_ran_in() {
        // Passes of 2, 1 and 1 (NaFlex budgets): jobs of one row each.
        assert_eq!(pass_sizes(&[1, 1, 1, 1], &[2, 1, 1]), [2, 2, 1, 1]);
        // One job over two passes of 8 and 3, then one in the second.
        assert_eq!(pass_sizes(&[10, 1], &[8, 3]), [8, 3]);
        assert_eq!(pass_sizes(&[3], &[3]), [3]);
    }
}
