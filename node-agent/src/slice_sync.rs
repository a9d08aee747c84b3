//! The slice watch feeding the queue: what each step of [`SliceWatcher`] means for the work.
//!
//! The first list makes the store complete: only then may reconciles remove anything (an
//! empty store before it must not read as "remove everything"), so every key is queued and
//! the agent adopts the host. A relist after compaction queues what changed, and the node-wide
//! keys (a deletion the watch missed leaves something for garbage collection). Watch events
//! queue their keys.

use std::sync::Arc;

use tokio::sync::watch;

use crate::key::Key;
use crate::reconcile::Context;
use crate::watch::{SliceSource, SliceWatcher, Step};

/// Runs the watch until `shutdown`; `synced` turns true after the first list.
pub async fn run<S: SliceSource>(
    mut watcher: SliceWatcher<S>,
    ctx: Arc<Context>,
    synced: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let step = tokio::select! {
            s = watcher.step() => s,
            _ = shutdown.changed() => return,
        };
        match step {
            Step::Synced { changed, relist } => {
                if !ctx.is_synced() {
                    ctx.mark_synced();
                    tracing::info!(
                        entries = ctx.store.keys().len(),
                        "slice listed; adopting and reconciling"
                    );
                    ctx.queue.add_all(ctx.all_keys());
                    let _ = synced.send(true);
                } else {
                    let relists = watcher.stats().relists;
                    tracing::info!(relist, changed = changed.len(), relists, "slice relisted");
                    ctx.queue.add_all(changed.into_iter().map(Key::from));
                    ctx.queue.add(Key::Nat);
                    ctx.queue.add(Key::Gc);
                }
            }
            Step::Changed(keys) => {
                tracing::debug!(?keys, "slice changed");
                ctx.queue.add_all(keys.into_iter().map(Key::from));
            }
            Step::Idle => {}
            Step::Retry { error, delay } => {
                tracing::warn!(%error, ?delay, state = ?watcher.state(), "slice watch interrupted; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}
