//! How the scale-out store's background tasks form groups: the admitter's script calls
//! (`admitter.rs`) and the committer's PostgreSQL transactions (`orders.rs`).

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

/// The next group from `rx`: waits for a first item, then for one of `permits` (the queue
/// grows meanwhile, so a group forms while earlier ones are in flight, and nothing waits for a
/// group to fill when idle), then takes what else is queued, up to `max` in all. `None` once
/// `cancel` fires or the channel has closed.
pub(crate) async fn next_group<T>(
    rx: &mut mpsc::Receiver<T>,
    permits: &Arc<Semaphore>,
    cancel: &CancellationToken,
    max: usize,
) -> Option<(OwnedSemaphorePermit, Vec<T>)> {
    let first = tokio::select! {
        first = rx.recv() => first,
        _ = cancel.cancelled() => None,
    }?;
    let permit = Arc::clone(permits).acquire_owned().await.ok()?;
    let mut group = vec![first];
    while group.len() < max {
        match rx.try_recv() {
            Ok(item) => group.push(item),
            Err(_) => break,
        }
    }
    Some((permit, group))
}
