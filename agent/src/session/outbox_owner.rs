//! The thread that owns the outbox's SQLite connection. Everyone else talks
//! to it through [`OutboxClient`]; appends are synchronous fsyncs, so they
//! must not run on the async session task.

use std::thread;
use std::time::{Duration, Instant};

use outpost_protocol::{Feedback, FeedbackAck, TelemetryAck, TelemetryBatch, TelemetryPayload};
use tokio::sync::{mpsc, oneshot};

use crate::outbox::Stream;
use crate::outbox::{Outbox, OutboxStore, StreamStats};

/// Requests the outbox thread serves, in arrival order.
#[derive(Debug)]
enum Request {
    Event {
        at_unix_ms: u64,
        payload: TelemetryPayload,
    },
    Feedback(Box<Feedback>),
    NextBatch {
        max_events: usize,
        max_bytes: usize,
        reply: oneshot::Sender<Option<TelemetryBatch>>,
    },
    Ack(TelemetryAck),
    NextFeedback {
        reply: oneshot::Sender<Option<Feedback>>,
    },
    AckFeedback(FeedbackAck),
    Stats {
        reply: oneshot::Sender<OutboxStats>,
    },
}

/// Both streams' figures.
#[derive(Debug, Clone, Copy)]
pub struct OutboxStats {
    /// Telemetry.
    pub telemetry: StreamStats,
    /// Feedback.
    pub feedback: StreamStats,
}

/// Why a record did not reach the outbox.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordError {
    /// The outbox thread is behind by a full queue; the record is dropped
    /// rather than delaying an answer.
    #[error("the outbox queue is full")]
    Full,
    /// The agent has stopped.
    #[error("the agent has stopped")]
    Stopped,
}

/// Cheap to clone; every method is non-blocking or async.
#[derive(Debug, Clone)]
pub struct OutboxClient {
    tx: mpsc::Sender<Request>,
}

/// How often records past their age bound are dropped.
const EXPIRE_EVERY: Duration = Duration::from_secs(60);

impl OutboxClient {
    /// Starts the owner thread over `outbox`. The thread ends when every
    /// client is dropped.
    pub fn spawn<S: OutboxStore + Send + 'static>(outbox: Outbox<S>, queue: usize) -> Self {
        let (tx, rx) = mpsc::channel(queue);
        thread::Builder::new()
            .name("outbox".into())
            .spawn(move || serve(outbox, rx))
            .expect("spawning the outbox thread");
        Self { tx }
    }

    /// Queues a telemetry event without waiting.
    pub fn record(&self, at_unix_ms: u64, payload: TelemetryPayload) -> Result<(), RecordError> {
        self.tx
            .try_send(Request::Event {
                at_unix_ms,
                payload,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => RecordError::Full,
                mpsc::error::TrySendError::Closed(_) => RecordError::Stopped,
            })
    }

    /// Queues rated feedback (already redacted by construction).
    pub async fn feedback(&self, feedback: Feedback) -> Result<(), RecordError> {
        self.tx
            .send(Request::Feedback(Box::new(feedback)))
            .await
            .map_err(|_| RecordError::Stopped)
    }

    /// The oldest unacknowledged events as one batch.
    pub async fn next_batch(&self, max_events: usize, max_bytes: usize) -> Option<TelemetryBatch> {
        let (reply, rx) = oneshot::channel();
        self.call(
            Request::NextBatch {
                max_events,
                max_bytes,
                reply,
            },
            rx,
        )
        .await
        .flatten()
    }

    /// Deletes what the hub acknowledged (of this outbox's epoch, and only
    /// what was handed out to be sent).
    pub async fn acknowledge(&self, ack: TelemetryAck) {
        let _ = self.tx.send(Request::Ack(ack)).await;
    }

    /// The oldest feedback record, with its id.
    pub async fn next_feedback(&self) -> Option<Feedback> {
        let (reply, rx) = oneshot::channel();
        self.call(Request::NextFeedback { reply }, rx)
            .await
            .flatten()
    }

    /// Deletes feedback the hub acknowledged (same rules as telemetry).
    pub async fn acknowledge_feedback(&self, ack: FeedbackAck) {
        let _ = self.tx.send(Request::AckFeedback(ack)).await;
    }

    /// Where both streams stand.
    pub async fn stats(&self) -> Option<OutboxStats> {
        let (reply, rx) = oneshot::channel();
        self.call(Request::Stats { reply }, rx).await
    }

    async fn call<T>(&self, request: Request, rx: oneshot::Receiver<T>) -> Option<T> {
        self.tx.send(request).await.ok()?;
        rx.await.ok()
    }
}

fn serve<S: OutboxStore>(mut outbox: Outbox<S>, mut rx: mpsc::Receiver<Request>) {
    let mut last_expire = Instant::now();
    while let Some(request) = rx.blocking_recv() {
        if last_expire.elapsed() >= EXPIRE_EVERY {
            last_expire = Instant::now();
            match outbox.expire(crate::now_unix_ms()) {
                Ok(0) => {}
                Ok(n) => tracing::warn!(dropped = n, "outbox records expired unsent"),
                Err(error) => tracing::warn!(%error, "cannot expire outbox records"),
            }
        }
        match request {
            Request::Event {
                at_unix_ms,
                payload,
            } => {
                if let Err(error) = outbox.push_event(at_unix_ms, payload) {
                    tracing::warn!(%error, "a telemetry event was not stored");
                }
            }
            Request::Feedback(feedback) => {
                if let Err(error) = outbox.push_feedback(&feedback) {
                    tracing::warn!(%error, "feedback was not stored");
                }
            }
            Request::NextBatch {
                max_events,
                max_bytes,
                reply,
            } => {
                let batch = outbox
                    .next_batch(max_events, max_bytes)
                    .unwrap_or_else(|error| {
                        tracing::warn!(%error, "cannot read the outbox");
                        None
                    });
                let _ = reply.send(batch);
            }
            Request::Ack(ack) => {
                if ack.epoch != outbox.epoch() {
                    tracing::warn!(ack = %ack.epoch, ours = %outbox.epoch(), "ignoring a telemetry ack of another outbox epoch");
                }
                match outbox.acknowledge(ack) {
                    Ok(n) => {
                        tracing::debug!(deleted = n, up_to = %ack.up_to_seq, "telemetry acknowledged")
                    }
                    Err(error) => tracing::warn!(%error, "cannot delete acknowledged telemetry"),
                }
            }
            Request::NextFeedback { reply } => {
                let next = outbox.next_feedback().unwrap_or_else(|error| {
                    tracing::warn!(%error, "cannot read feedback");
                    None
                });
                let _ = reply.send(next);
            }
            Request::AckFeedback(ack) => {
                if ack.epoch != outbox.epoch() {
                    tracing::warn!(ack = %ack.epoch, ours = %outbox.epoch(), "ignoring a feedback ack of another outbox epoch");
                }
                if let Err(error) = outbox.acknowledge_feedback(ack) {
                    tracing::warn!(%error, "cannot delete acknowledged feedback");
                }
            }
            Request::Stats { reply } => {
                let _ = reply.send(OutboxStats {
                    telemetry: outbox.stats(Stream::Telemetry),
                    feedback: outbox.stats(Stream::Feedback),
                });
            }
        }
    }
}
