//! The thread that owns the outbox's SQLite connection. Everyone else talks
//! to it through [`OutboxClient`]; appends are synchronous fsyncs, so they
//! must not run on the async session task.

use std::thread;
use std::time::{Duration, Instant};

use outpost_protocol::{
    EventId, Feedback, FeedbackAck, FeedbackId, OutboxEpoch, TelemetryAck, TelemetryBatch,
    TelemetryPayload,
};
use tokio::sync::{mpsc, oneshot};

use crate::outbox::Stream;
use crate::outbox::{Outbox, OutboxStore, StreamStats};

/// Requests the outbox thread serves, in arrival order.
#[derive(Debug)]
enum Request {
    Event {
        at_unix_ms: u64,
        payload: TelemetryPayload,
        /// Stored only in this epoch: the event names another by number.
        epoch: Option<OutboxEpoch>,
        /// Told where the event went, for a caller that names it later.
        reply: Option<oneshot::Sender<Result<EventId, RecordError>>>,
    },
    Feedback {
        feedback: Box<Feedback>,
        /// The rated answer; feedback about an answer of another epoch is
        /// refused, since its `answer_seq` would name another event.
        answer: Option<EventId>,
        reply: Option<oneshot::Sender<Result<FeedbackId, RecordError>>>,
    },
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
    /// The outbox could not store the record (its log says why).
    #[error("the outbox could not store the record")]
    NotStored,
    /// Feedback about an answer numbered in an outbox epoch that is no
    /// longer this outbox's (the outbox was reset since): its sequence
    /// number would name another event.
    #[error("the rated answer was recorded in another outbox epoch")]
    OtherEpoch,
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
                epoch: None,
                reply: None,
            })
            .map_err(full_or_stopped)
    }

    /// Queues a telemetry event that names another event of `epoch`,
    /// without waiting; it is dropped (and logged) if the outbox was reset
    /// to another epoch since, where its number would name another event.
    pub fn record_in(
        &self,
        epoch: OutboxEpoch,
        at_unix_ms: u64,
        payload: TelemetryPayload,
    ) -> Result<(), RecordError> {
        self.tx
            .try_send(Request::Event {
                at_unix_ms,
                payload,
                epoch: Some(epoch),
                reply: None,
            })
            .map_err(full_or_stopped)
    }

    /// Queues a telemetry event without waiting for room (a full queue
    /// drops it), then waits until it is stored and says where.
    pub async fn record_numbered(
        &self,
        at_unix_ms: u64,
        payload: TelemetryPayload,
    ) -> Result<EventId, RecordError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Request::Event {
                at_unix_ms,
                payload,
                epoch: None,
                reply: Some(reply),
            })
            .map_err(full_or_stopped)?;
        rx.await.map_err(|_| RecordError::Stopped)?
    }

    /// Queues rated feedback (already redacted by construction).
    pub async fn feedback(&self, feedback: Feedback) -> Result<(), RecordError> {
        self.tx
            .send(Request::Feedback {
                feedback: Box::new(feedback),
                answer: None,
                reply: None,
            })
            .await
            .map_err(|_| RecordError::Stopped)
    }

    /// Stores feedback about the answer `answer` and returns its id, once
    /// it is on disk; [`RecordError::OtherEpoch`] when the answer was
    /// numbered before the outbox was reset.
    pub async fn feedback_on(
        &self,
        answer: EventId,
        feedback: Feedback,
    ) -> Result<FeedbackId, RecordError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Feedback {
                feedback: Box::new(feedback),
                answer: Some(answer),
                reply: Some(reply),
            })
            .await
            .map_err(|_| RecordError::Stopped)?;
        rx.await.map_err(|_| RecordError::Stopped)?
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

fn full_or_stopped<T>(e: mpsc::error::TrySendError<T>) -> RecordError {
    match e {
        mpsc::error::TrySendError::Full(_) => RecordError::Full,
        mpsc::error::TrySendError::Closed(_) => RecordError::Stopped,
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
                epoch: Some(epoch), ..
            } if epoch != outbox.epoch() => {
                tracing::warn!(%epoch, "an event naming an answer of an earlier outbox epoch was dropped");
            }
            Request::Event {
                at_unix_ms,
                payload,
                reply,
                ..
            } => {
                let stored = outbox.push_event(at_unix_ms, payload).map_err(|error| {
                    tracing::warn!(%error, "a telemetry event was not stored");
                    RecordError::NotStored
                });
                if let Some(reply) = reply {
                    let epoch = outbox.epoch();
                    let _ = reply.send(stored.map(|seq| EventId { epoch, seq }));
                }
            }
            Request::Feedback {
                feedback,
                answer,
                reply,
            } => {
                let stored = if answer.is_some_and(|a| a.epoch != outbox.epoch()) {
                    Err(RecordError::OtherEpoch)
                } else {
                    outbox.push_feedback(&feedback).map_err(|error| {
                        tracing::warn!(%error, "feedback was not stored");
                        RecordError::NotStored
                    })
                };
                if let Some(reply) = reply {
                    let _ = reply.send(stored);
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

#[cfg(test)]
mod tests {
    use outpost_protocol::{
        redact, ActiveVersions, DeviceId, DeviceMetrics, OutboxEpoch, Rating, Seq,
    };

    use super::*;
    use crate::outbox::{MemStore, OutboxConfig};

    fn client() -> (OutboxClient, OutboxEpoch) {
        let device = DeviceId::parse("kiosk-7").expect("valid id");
        let outbox = Outbox::open(MemStore::new(), OutboxConfig::new(device)).expect("open");
        let epoch = outbox.epoch();
        (OutboxClient::spawn(outbox, 8), epoch)
    }

    fn sample() -> TelemetryPayload {
        TelemetryPayload::Metrics(DeviceMetrics {
            cpu_percent: 1.0,
            mem_used_bytes: 1,
            mem_total_bytes: 2,
            disk_used_bytes: 0,
            disk_total_bytes: 0,
            temperature_c: None,
        })
    }

    fn feedback() -> Feedback {
        Feedback {
            id: FeedbackId::default(),
            answer_seq: Seq(0),
            rating: Rating::ThumbsDown,
            question: redact("").text,
            answer: redact("").text,
            versions: ActiveVersions::default(),
            at_unix_ms: 5,
        }
    }

    #[tokio::test]
    async fn a_numbered_record_says_its_epoch_and_sequence_number() {
        let (client, epoch) = client();
        client.record(1, sample()).expect("queued");
        let second = client.record_numbered(2, sample()).await.expect("stored");
        assert_eq!(second, EventId { epoch, seq: Seq(2) });
        let batch = client.next_batch(10, 1 << 20).await.expect("a batch");
        assert_eq!(batch.epoch(), epoch);
        assert_eq!(batch.events()[1].seq, second.seq);
    }

    #[tokio::test]
    async fn feedback_on_an_answer_of_another_epoch_is_refused_and_not_stored() {
        let (client, epoch) = client();
        let answer = client.record_numbered(1, sample()).await.expect("stored");
        let stale = EventId {
            epoch: OutboxEpoch(epoch.0.wrapping_add(1)),
            seq: answer.seq,
        };
        assert_eq!(
            client.feedback_on(stale, feedback()).await,
            Err(RecordError::OtherEpoch)
        );
        assert!(client.next_feedback().await.is_none());
        let id = client
            .feedback_on(answer, feedback())
            .await
            .expect("stored");
        assert_eq!(id.epoch, epoch);
        assert_eq!(client.next_feedback().await.map(|f| f.id), Some(id));
    }

    #[tokio::test]
    async fn an_event_naming_another_epoch_is_dropped_and_one_of_this_epoch_kept() {
        let (client, epoch) = client();
        let stale = OutboxEpoch(epoch.0.wrapping_add(1));
        client.record_in(stale, 1, sample()).expect("queued");
        client.record_in(epoch, 2, sample()).expect("queued");
        // Served in order: once this is stored, both were handled.
        client.record_numbered(3, sample()).await.expect("stored");
        let batch = client.next_batch(10, 1 << 20).await.expect("a batch");
        let times: Vec<u64> = batch.events().iter().map(|e| e.at_unix_ms).collect();
        assert_eq!(times, vec![2, 3], "the stale event is not stored");
    }
}
