//! The plumbing behind the crate's one handle shape (crate docs, "Using a
//! pattern"): a pattern's task runs under a child of the caller's token;
//! `shutdown` cancels that child only and waits; dropping the handle
//! cancels it without waiting.

use std::future::Future;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A pattern's main task, owned by the pattern's handle.
///
/// Dropping it cancels the child token (the task stops in the background);
/// [`shutdown`](Self::shutdown) cancels and waits for the task's result.
#[derive(Debug)]
pub(crate) struct PatternTask<T> {
    token: CancellationToken,
    join: Option<JoinHandle<T>>,
    /// The result, once [`finished`](Self::finished) has seen the task end.
    done: Option<Result<T, TaskPanicked>>,
}

/// The pattern's task panicked (or was aborted): its result is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TaskPanicked;

impl<T: Send + 'static> PatternTask<T> {
    /// Spawns `run(child)` on the current runtime, where `child` is a new
    /// child of `parent`.
    pub(crate) fn spawn<F, Fut>(parent: &CancellationToken, run: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        let token = parent.child_token();
        let join = tokio::spawn(run(token.clone()));
        Self {
            token,
            join: Some(join),
            done: None,
        }
    }

    /// Wraps a task already spawned under `token` (a child token the
    /// caller derived itself).
    pub(crate) fn from_parts(token: CancellationToken, join: JoinHandle<T>) -> Self {
        Self {
            token,
            join: Some(join),
            done: None,
        }
    }

    /// The child token the task runs under.
    #[cfg(test)]
    pub(crate) fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// True once the task has ended (stopped, failed or panicked).
    #[cfg(test)]
    pub(crate) fn is_finished(&self) -> bool {
        self.join.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Cancels the child token and waits for the task's result.
    pub(crate) async fn shutdown(mut self) -> Result<T, TaskPanicked> {
        self.token.cancel();
        self.join().await
    }

    /// Waits for the task to end by itself (or by a cancelled parent).
    pub(crate) async fn join(&mut self) -> Result<T, TaskPanicked> {
        self.finished().await;
        self.done.take().unwrap_or(Err(TaskPanicked))
    }

    /// Waits until the task has ended and keeps its result for
    /// [`join`](Self::join) or [`shutdown`](Self::shutdown). Cancel-safe:
    /// dropping this future loses nothing.
    pub(crate) async fn finished(&mut self) {
        if self.done.is_some() {
            return;
        }
        if let Some(join) = self.join.as_mut() {
            let result = join.await.map_err(|_| TaskPanicked);
            self.join = None;
            self.done = Some(result);
        }
    }
}

impl<T> Drop for PatternTask<T> {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_cancels_the_child_only_and_returns_the_result() {
        let parent = CancellationToken::new();
        let a = PatternTask::spawn(&parent, |t| async move {
            t.cancelled().await;
            7
        });
        let b = PatternTask::spawn(&parent, |t| async move {
            t.cancelled().await;
            8
        });
        assert_eq!(a.shutdown().await, Ok(7));
        assert!(!parent.is_cancelled());
        assert!(!b.token().is_cancelled());
        assert!(!b.is_finished());
        parent.cancel();
        let mut b = b;
        assert_eq!(b.join().await, Ok(8));
    }

    #[tokio::test]
    async fn drop_cancels_and_a_panic_is_reported() {
        let parent = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let a = PatternTask::spawn(&parent, |t| async move {
            t.cancelled().await;
            let _ = tx.send(());
        });
        drop(a);
        rx.await.expect("the task saw its token cancelled");
        assert!(!parent.is_cancelled());
        let p = PatternTask::spawn(&parent, |_| async { panic!("boom") });
        assert_eq!(p.shutdown().await, Err::<(), _>(TaskPanicked));
    }
}
