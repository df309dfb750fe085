//! The worker's side of the bus: lease requests to the coordinator, heartbeats, and event
//! publication into the JetStream stream with the dedup id.

use std::future::IntoFuture;
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream;
use async_nats::HeaderMap;
use tracing::{debug, warn};
use wafleet_bus_schema::codec::{decode, encode, ContentType};
use wafleet_bus_schema::internal::v1 as internal;
use wafleet_bus_schema::nats::{content_type_of, event_publication};
use wafleet_bus_schema::time::timestamp;
use wafleet_bus_schema::v1::{self, ErrorCode, ReasonCode};
use wafleet_bus_schema::{
    BusMessage, EventStreamConfig, SessionAddress, SysKind, SysSubject, WorkerId,
    CONTENT_TYPE_HEADER,
};

use super::metrics as m;

/// Why a lease request did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// The coordinator answered with a refusal (stale epoch, not leased, …).
    #[error("refused ({code:?}): {message}")]
    Refused {
        /// The error code.
        code: ErrorCode,
        /// The coordinator's words.
        message: String,
    },
    /// No answer (no coordinator leads, NATS is down, the request timed out).
    #[error("no answer from the coordinator: {0}")]
    Unavailable(String),
}

impl LeaseError {
    /// True when the coordinator said the lease is not ours any more.
    pub fn is_fenced(&self) -> bool {
        matches!(
            self,
            LeaseError::Refused {
                code: ErrorCode::StaleEpoch
                    | ErrorCode::NotLeased
                    | ErrorCode::UnknownSession
                    | ErrorCode::Conflict,
                ..
            }
        )
    }
}

/// An event that could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishFailed {
    /// The event breaks the contract (a bug): never retried.
    #[error("invalid event: {0}")]
    Invalid(String),
    /// Every attempt failed.
    #[error("publish failed after {attempts} attempts: {last}")]
    Exhausted {
        /// How many attempts.
        attempts: u32,
        /// The last error.
        last: String,
    },
}

/// How many times a lease release is sent while the coordinator does not answer.
pub const RELEASE_ATTEMPTS: u32 = 5;

/// The pause after unanswered attempt `attempt` (1, 2, …) of a request to the coordinator
/// that is sent again (a release, a blob commit): 100 ms, doubling, at most 800 ms.
pub fn retry_pause(attempt: u32) -> Duration {
    Duration::from_millis(100u64 << attempt.saturating_sub(1).min(3))
}

/// The worker's NATS connection and identity.
#[derive(Clone)]
pub struct FleetBus {
    client: async_nats::Client,
    js: jetstream::Context,
    worker: WorkerId,
    request_timeout: Duration,
    /// How session events are encoded (`Content-Type` header and payload).
    event_encoding: ContentType,
}

impl std::fmt::Debug for FleetBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetBus")
            .field("worker", &self.worker)
            .finish_non_exhaustive()
    }
}

fn protobuf_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE_HEADER, ContentType::Protobuf.header_value());
    headers
}

impl FleetBus {
    /// The bus of `worker` on `client`.
    pub fn new(client: async_nats::Client, worker: WorkerId, request_timeout: Duration) -> Self {
        let js = jetstream::new(client.clone());
        FleetBus {
            client,
            js,
            worker,
            request_timeout,
            event_encoding: ContentType::Protobuf,
        }
    }

    /// Session events in `encoding` from now on (protobuf unless set).
    pub fn with_event_encoding(mut self, encoding: ContentType) -> Self {
        self.event_encoding = encoding;
        self
    }

    /// The NATS client.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// This worker's id.
    pub fn worker(&self) -> &WorkerId {
        &self.worker
    }

    /// Creates the event stream with `replicas` replicas if it does not exist (an existing
    /// one is left as it is).
    pub async fn ensure_event_stream(&self, replicas: usize) -> Result<(), String> {
        let config = EventStreamConfig {
            replicas: replicas.max(1),
            ..EventStreamConfig::default()
        };
        self.js
            .get_or_create_stream(config.to_nats())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn subject(&self, kind: SysKind) -> String {
        SysSubject::new(self.worker.clone(), kind).to_string()
    }

    async fn request<M: BusMessage, R: BusMessage>(
        &self,
        kind: SysKind,
        message: &M,
    ) -> Result<R, LeaseError> {
        let payload = encode(message, ContentType::Protobuf)
            .map_err(|e| LeaseError::Unavailable(format!("encode: {e}")))?;
        let request = async_nats::Request::new()
            .payload(payload.into())
            .headers(protobuf_headers())
            .timeout(Some(self.request_timeout));
        let reply = self
            .client
            .send_request(self.subject(kind), request)
            .await
            .map_err(|e| LeaseError::Unavailable(e.to_string()))?;
        let ct = ContentType::from_header(content_type_of(reply.headers.as_ref()))
            .map_err(|e| LeaseError::Unavailable(format!("reply: {e}")))?;
        decode(&reply.payload, ct).map_err(|e| LeaseError::Unavailable(format!("reply: {e}")))
    }

    async fn lease_request<M: BusMessage>(
        &self,
        kind: SysKind,
        message: &M,
    ) -> Result<internal::LeaseGrant, LeaseError> {
        let reply: internal::LeaseReply = self.request(kind, message).await?;
        match reply.outcome {
            Some(internal::lease_reply::Outcome::Lease(grant)) => Ok(grant),
            Some(internal::lease_reply::Outcome::Error(error)) => Err(LeaseError::Refused {
                code: ErrorCode::try_from(error.code).unwrap_or(ErrorCode::Unspecified),
                message: error.message,
            }),
            None => Err(LeaseError::Unavailable("empty lease reply".into())),
        }
    }

    /// Renews a lease; the reply is the renewed grant.
    pub async fn renew(
        &self,
        address: &SessionAddress,
        epoch: u64,
    ) -> Result<internal::LeaseGrant, LeaseError> {
        let renew = internal::LeaseRenew {
            tenant: address.tenant.as_str().to_string(),
            session: address.session.as_str().to_string(),
            epoch,
            worker_id: self.worker.as_str().to_string(),
        };
        self.lease_request(SysKind::LeaseRenew, &renew).await
    }

    /// Releases a lease with a reason (final reasons settle the session). Unanswered
    /// releases (no coordinator leads for a moment, or the leader died holding the
    /// request) are sent again, [`RELEASE_ATTEMPTS`] times in all, 100 ms apart and
    /// doubling: a release is idempotent, and a lost one leaves the session waiting for its
    /// lease to run out.
    pub async fn release(
        &self,
        address: &SessionAddress,
        epoch: u64,
        reason: ReasonCode,
    ) -> Result<internal::LeaseGrant, LeaseError> {
        let release = internal::LeaseRelease {
            tenant: address.tenant.as_str().to_string(),
            session: address.session.as_str().to_string(),
            epoch,
            worker_id: self.worker.as_str().to_string(),
            reason: reason as i32,
        };
        let mut attempt = 1;
        loop {
            match self.lease_request(SysKind::LeaseRelease, &release).await {
                Err(LeaseError::Unavailable(why)) if attempt < RELEASE_ATTEMPTS => {
                    debug!(session = %address, epoch, attempt, %why, "release unanswered; sending it again");
                    tokio::time::sleep(retry_pause(attempt)).await;
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    /// The fencing step before a blob write: the coordinator accepts `version` only while
    /// `epoch` is the session's current lease and held by this worker.
    pub async fn commit_blob(
        &self,
        address: &SessionAddress,
        epoch: u64,
        version: u64,
    ) -> Result<internal::LeaseGrant, LeaseError> {
        let commit = internal::BlobCommit {
            tenant: address.tenant.as_str().to_string(),
            session: address.session.as_str().to_string(),
            epoch,
            worker_id: self.worker.as_str().to_string(),
            version,
        };
        self.lease_request(SysKind::BlobCommit, &commit).await
    }

    async fn publish_sys<M: BusMessage>(&self, kind: SysKind, message: &M) -> Result<(), String> {
        let payload = encode(message, ContentType::Protobuf).map_err(|e| e.to_string())?;
        self.client
            .publish_with_headers(self.subject(kind), protobuf_headers(), payload.into())
            .await
            .map_err(|e| e.to_string())
    }

    /// Sends a heartbeat (it also renews the listed leases at the coordinator) and waits
    /// for the acknowledgement, which says which leases were renewed and for how long.
    pub async fn heartbeat(
        &self,
        capacity: u32,
        leases: Vec<internal::HeldLease>,
        draining: bool,
    ) -> Result<internal::HeartbeatAck, LeaseError> {
        let heartbeat = internal::WorkerHeartbeat {
            worker_id: self.worker.as_str().to_string(),
            capacity,
            leases,
            draining,
            sent_at: Some(timestamp(SystemTime::now())),
            version: env!("CARGO_PKG_VERSION").to_string(),
        };
        self.request(SysKind::Heartbeat, &heartbeat).await
    }

    /// Announces that the worker is going away.
    pub async fn announce_shutdown(
        &self,
        leases: Vec<internal::HeldLease>,
        deadline: SystemTime,
    ) -> Result<(), String> {
        let shutdown = internal::WorkerShutdown {
            worker_id: self.worker.as_str().to_string(),
            leases,
            deadline: Some(timestamp(deadline)),
        };
        self.publish_sys(SysKind::Shutdown, &shutdown).await?;
        self.client.flush().await.map_err(|e| e.to_string())
    }

    /// Publishes one event into the stream and waits for the stream's ack, repeating with
    /// the same `Nats-Msg-Id` until acked (the stream keeps it once) or `attempts` run
    /// out. `created` is when the event was produced, for the publish-lag metric.
    pub async fn publish_event(
        &self,
        event: &v1::SessionEvent,
        created: Instant,
        attempts: u32,
    ) -> Result<(), PublishFailed> {
        let publication = event_publication(event, self.event_encoding)
            .map_err(|e| PublishFailed::Invalid(e.to_string()))?;
        let subject = publication.subject.to_string();
        let mut last = String::new();
        let mut delay = Duration::from_millis(50);
        for attempt in 1..=attempts.max(1) {
            let sent = self
                .js
                .publish_with_headers(
                    subject.clone(),
                    publication.headers.clone(),
                    publication.payload.clone().into(),
                )
                .await;
            let acked = match sent {
                Ok(ack) => tokio::time::timeout(self.request_timeout, ack.into_future())
                    .await
                    .map_err(|_| "no ack in time".to_string())
                    .and_then(|r| r.map_err(|e| e.to_string())),
                Err(e) => Err(e.to_string()),
            };
            match acked {
                Ok(ack) => {
                    if ack.duplicate {
                        debug!(%subject, "event was stored already (duplicate ack)");
                    }
                    metrics::histogram!(m::EVENT_PUBLISH_LAG).record(created.elapsed());
                    return Ok(());
                }
                Err(e) => {
                    warn!(%subject, attempt, error = %e, "event publish not acked; repeating with the same id");
                    last = e;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
        metrics::counter!(m::EVENTS_FAILED).increment(1);
        Err(PublishFailed::Exhausted {
            attempts: attempts.max(1),
            last,
        })
    }

    /// Answers a request with `message` (protobuf).
    pub async fn answer<M: BusMessage>(&self, reply_to: Option<&async_nats::Subject>, message: &M) {
        let Some(reply_to) = reply_to else {
            // Revokes are published without a reply subject: nobody waits.
            debug!("no reply subject: nothing to answer");
            return;
        };
        match encode(message, ContentType::Protobuf) {
            Ok(payload) => {
                if let Err(e) = self
                    .client
                    .publish_with_headers(reply_to.clone(), protobuf_headers(), payload.into())
                    .await
                {
                    warn!(error = %e, "answering a coordinator request failed");
                }
            }
            Err(e) => warn!(error = %e, "cannot encode a reply"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_pause_doubles_from_100_ms_to_800_ms() {
        let pauses: Vec<u64> = (1..=6).map(|a| retry_pause(a).as_millis() as u64).collect();
        assert_eq!(pauses, [100, 200, 400, 800, 800, 800]);
    }
}
