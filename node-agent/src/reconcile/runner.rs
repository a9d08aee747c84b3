//! The runner: pops keys from the queue, reconciles each inside a tracing span that names
//! it, and does what the outcome asks — a requeue on success if asked, the error policy's
//! requeue, a failure report and (for failures users must see) a warning event on error.

use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use super::context::Context;
use super::error::ReconcileError;
use super::policy::Backoffs;
use super::{Action, reconcile, reports};
use crate::error_chain::error_chain;
use crate::key::Key;

pub struct Runner {
    ctx: Arc<Context>,
    backoffs: Backoffs,
}

impl Runner {
    pub fn new(ctx: Arc<Context>) -> Arc<Self> {
        Arc::new(Runner {
            ctx,
            backoffs: Backoffs::default(),
        })
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// Reconciles `key` once and schedules what the outcome asks for. Returns the outcome
    /// (the failure's reason on error).
    pub async fn process(&self, key: &Key) -> Result<Action, String> {
        let span = tracing::info_span!("reconcile", key = %key, node = %self.ctx.node);
        let started = std::time::Instant::now();
        let result = reconcile(key, &self.ctx).instrument(span.clone()).await;
        crate::metrics::reconciled(key, result.is_ok(), started.elapsed());
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        match result {
            Ok(action) => {
                self.backoffs.succeeded(key);
                tracing::debug!(parent: &span, elapsed_ms, ?action, "reconciled");
                if let Action::Requeue(d) = action {
                    self.ctx.queue.add_after(key.clone(), d);
                }
                Ok(action)
            }
            Err(err) => {
                let action = self.backoffs.failed(key, &err);
                self.report_failure(key, &err, &span).await;
                let delay = match action {
                    Action::Requeue(d) => d,
                    Action::AwaitChange => Duration::ZERO,
                };
                if let ReconcileError::ImagePulling { .. } = err {
                    // Waiting for a pull is not a failure; its status says how it goes.
                    tracing::debug!(parent: &span, elapsed_ms, error = %error_chain(&err), ?delay, "waiting for an image");
                } else {
                    tracing::warn!(parent: &span, elapsed_ms, reason = err.reason(), error = %error_chain(&err), ?delay, "reconcile failed");
                }
                if let Action::Requeue(d) = action {
                    self.ctx.queue.add_after(key.clone(), d);
                }
                Err(err.reason().to_string())
            }
        }
    }

    /// The failure in the key's objects' status, and as a warning event when users must act
    /// (an image that cannot be pulled, a container that cannot be created, an address
    /// another host holds).
    async fn report_failure(&self, key: &Key, err: &ReconcileError, span: &tracing::Span) {
        let (container_id, restarts) = key
            .container()
            .map(|name| self.ctx.restarts_known(name))
            .unwrap_or((None, 0));
        let value = key.slice_key().and_then(|k| self.ctx.store.get(&k));
        let failure = reports::failure(value.as_ref(), err, container_id, restarts);
        if !failure.is_empty()
            && let Err(e) = self.ctx.reporter.sync(key, failure).await
        {
            tracing::warn!(parent: span, error = %error_chain(&e), "failed to report a failure");
        }
        if let ReconcileError::ImagePull { .. }
        | ReconcileError::ContainerCreate { .. }
        | ReconcileError::AddressConflict { .. } = err
            && let Some(name) = key.container()
        {
            self.ctx
                .recorder
                .warning(
                    topo_schema::kinds::ObjectRef::new(topo_schema::kinds::Kind::Container, name),
                    err.reason(),
                    error_chain(err),
                )
                .await;
        }
    }

    /// A worker: pops keys until the queue shuts down.
    pub async fn run_worker(self: Arc<Self>) {
        while let Some(key) = self.ctx.queue.pop().await {
            let _ = self.process(&key).await;
            self.ctx.queue.done(&key);
        }
    }

    /// Processes queued keys in this task until none is queued (delayed requeues are not
    /// waited for). For tests and the first pass.
    pub async fn run_until_idle(&self) -> Vec<(Key, Result<Action, String>)> {
        let mut out = Vec::new();
        while !self.ctx.queue.is_empty() {
            let Some(key) = self.ctx.queue.pop().await else {
                break;
            };
            let r = self.process(&key).await;
            self.ctx.queue.done(&key);
            out.push((key, r));
        }
        out
    }
}
