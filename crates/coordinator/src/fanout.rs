//! The fan-out of one request to a key's replicas, in one piece (Garage's `RequestStrategy`
//! and `try_write_many_sets` are the model): one background task per request sends every
//! call, passes each useful answer on as it comes, and carries on after the caller has its
//! quorum (replication past W, hints for the replicas that missed a write, read repair once
//! every replica has answered). The caller only counts answers ([`until_met`]): the request
//! is answered as soon as its quorum is, and nothing it started is cut short.

use std::future::Future;

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::quorum::Tally;

/// One useful answer of a fan-out.
#[derive(Debug)]
pub enum Answer<T> {
    /// A replica did the call and answered `T`.
    Replica(String, T),
    /// Node `by` keeps a hint for a replica that missed a write; it counts toward W when
    /// `counts` (a fallback, with sloppy quorum). A hint is never a primary's copy.
    Hint {
        /// The node that keeps it.
        by: String,
        /// Whether it counts toward W.
        counts: bool,
    },
}

/// Starts `work` in the background, tracked by `tasks` (shutdown waits for it), handing it the
/// sender of its answers; returns their receiver. `capacity` bounds the answers not yet read:
/// at least one per call the work makes, so that it never waits on a caller that is gone.
pub fn spawn<T, F, W>(tasks: &TaskTracker, capacity: usize, work: W) -> mpsc::Receiver<Answer<T>>
where
    T: Send + 'static,
    F: Future<Output = ()> + Send + 'static,
    W: FnOnce(mpsc::Sender<Answer<T>>) -> F,
{
    let (sender, receiver) = mpsc::channel(capacity.max(1));
    tasks.spawn(work(sender));
    receiver
}

/// Counts `answers` into `tally` until it is met or no answer can come any more (the work
/// ended); returns what the replicas answered, in the order they did.
pub async fn until_met<T>(tally: &mut Tally, answers: &mut mpsc::Receiver<Answer<T>>) -> Vec<(String, T)> {
    let mut values = Vec::new();
    while !tally.met() {
        match answers.recv().await {
            Some(Answer::Replica(id, value)) => {
                tally.add(&id, true);
                values.push((id, value));
            }
            Some(Answer::Hint { by, counts }) => tally.add_hint(&by, counts),
            None => break,
        }
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quorum::Need;

    fn tally(required: usize) -> Tally {
        let zones = ["a", "b", "c"].iter().map(|id| (id.to_string(), "z".to_string())).collect();
        Tally::new(Need::Count(required), 1, zones, "z").unwrap()
    }

    #[tokio::test]
    async fn answers_once_met_and_the_work_goes_on() {
        let tasks = TaskTracker::new();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let mut answers = spawn(&tasks, 3, |sender| async move {
            for id in ["a", "b", "c"] {
                let _ = sender.send(Answer::Replica(id.to_owned(), id.len())).await;
            }
            let _ = done_tx.send(());
        });
        let mut met = tally(2);
        let values = until_met(&mut met, &mut answers).await;
        assert!(met.met());
        assert_eq!(values.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        // The third answer still comes, after the caller stopped counting.
        drop(answers);
        done_rx.await.unwrap();
        tasks.close();
        tasks.wait().await;
    }

    #[tokio::test]
    async fn a_hint_alone_is_not_a_primary_copy_and_the_end_of_the_work_ends_the_wait() {
        let tasks = TaskTracker::new();
        let mut answers = spawn::<(), _, _>(&tasks, 2, |sender| async move {
            let _ = sender.send(Answer::Hint { by: "d".into(), counts: true }).await;
            let _ = sender.send(Answer::Hint { by: "e".into(), counts: true }).await;
        });
        let mut met = tally(2);
        assert!(until_met(&mut met, &mut answers).await.is_empty());
        assert!(!met.met(), "two counting hints but no primary's own copy");
        assert_eq!(met.acks(), 2);
    }
}
