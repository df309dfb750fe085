//! The `send` command, answered by the session's holder: the session task subscribes to
//! `wafleet.v1.<tenant>.cmd.session.<session>.send` while its driver runs, so a send goes
//! backend → NATS → the socket's worker, with no coordinator on the path.
//!
//! A send is idempotent by `command_id`, on three levels:
//! - [`SendDesk`] keeps the replies of this holder's finished sends (a repeat is answered
//!   from there, `replayed`) and joins a repeat to a send in flight;
//! - below it, the driver passes the command id and a digest of the command as the send's
//!   [`SendReference`], which the messenger keeps with the message in the session's stored
//!   state (saved before the ciphertext leaves). A repeat that reaches the next holder after
//!   a failover finds it there and sends the same message again *with the same id*: the
//!   first try may or may not have reached WhatsApp, and a recipient keeps one message per
//!   id. The same id with another body is `IDEMPOTENCY_KEY_REUSED`, here or there.
//!
//! A token bucket per session ([`SendRate`]) answers `RATE_LIMITED` with a `retry_after`
//! instead of queueing without bound: WhatsApp bans accounts that send in bursts.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message as _;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tracing::{debug, warn};
use wafleet_bus_schema::codec::{encode, ContentType};
use wafleet_bus_schema::nats::{content_type_of, decode_command_message};
use wafleet_bus_schema::time::timestamp;
use wafleet_bus_schema::v1::{self, send_message::Content, session_event::Payload, ErrorCode};
use wafleet_bus_schema::{CommandBody, CONTENT_TYPE_HEADER};
use wafleet_messaging::{Outgoing, SendReference};
use wafleet_protocol::message::{
    encode_edit, encode_reaction, encode_revoke, MessageKey, ReplyContext,
};

use super::inbound::Emitter;
use super::lease::LeaseClock;
use super::metrics as m;
use crate::driver::{ControlError, DriverControl};
use crate::recipient::Recipient;

/// Replies of finished sends a holder keeps for repeats (the stored session keeps the
/// last [`wafleet_messaging::RECENT_OUTBOUND`] sends' references beyond that, across
/// holders).
pub const REPLIES_KEPT: usize = 4096;

/// How long a send's `message_sent` event may wait for the stream's ack before the reply
/// goes out without it.
const EVENT_ACK_WAIT: Duration = Duration::from_secs(5);

/// A session's send rate: a token bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SendRate {
    /// Tokens added per second (sustained messages per second).
    pub per_second: f64,
    /// The bucket's size (the longest burst).
    pub burst: u32,
}

impl Default for SendRate {
    /// 20 messages a second, bursts of 40.
    fn default() -> SendRate {
        SendRate {
            per_second: 20.0,
            burst: 40,
        }
    }
}

/// A token bucket on a monotonic clock.
#[derive(Debug)]
struct Bucket {
    rate: SendRate,
    tokens: f64,
    at: tokio::time::Instant,
}

impl Bucket {
    fn new(rate: SendRate, now: tokio::time::Instant) -> Bucket {
        Bucket {
            rate,
            tokens: f64::from(rate.burst),
            at: now,
        }
    }

    /// Takes a token, or says how long until one is there.
    fn take(&mut self, now: tokio::time::Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens =
            (self.tokens + elapsed * self.rate.per_second).min(f64::from(self.rate.burst.max(1)));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        if self.rate.per_second <= 0.0 {
            return Err(Duration::from_secs(3600));
        }
        let wait = (1.0 - self.tokens) / self.rate.per_second;
        Err(Duration::from_secs_f64(wait).max(Duration::from_millis(1)))
    }
}

/// What [`SendDesk::begin`] decided.
enum Begin {
    /// Send it.
    Go,
    /// Answered already (a finished repeat, a reuse, a rate limit).
    Answer(Box<v1::CommandReply>),
    /// A repeat of a send in flight: its reply comes here.
    Wait(oneshot::Receiver<v1::CommandReply>),
}

#[derive(Default)]
struct DeskState {
    /// Finished sends: command id → (digest, reply).
    done: HashMap<String, (String, v1::CommandReply)>,
    /// `done`'s keys, oldest first.
    order: VecDeque<String>,
    /// Sends in flight: command id → (digest, repeats waiting).
    in_flight: HashMap<String, (String, Vec<oneshot::Sender<v1::CommandReply>>)>,
}

/// One session's send bookkeeping on its holder: finished replies, sends in flight, the
/// rate limit.
pub struct SendDesk {
    state: Mutex<DeskState>,
    bucket: Mutex<Bucket>,
}

impl SendDesk {
    /// A desk with `rate`.
    pub fn new(rate: SendRate) -> SendDesk {
        SendDesk {
            state: Mutex::default(),
            bucket: Mutex::new(Bucket::new(rate, tokio::time::Instant::now())),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, DeskState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn begin(&self, command_id: &str, digest: &str) -> Begin {
        let mut state = self.state();
        if let Some((first, reply)) = state.done.get(command_id) {
            return Begin::Answer(Box::new(if first == digest {
                replayed(reply.clone())
            } else {
                reused(command_id)
            }));
        }
        if let Some((first, waiters)) = state.in_flight.get_mut(command_id) {
            if first != digest {
                return Begin::Answer(Box::new(reused(command_id)));
            }
            let (tx, rx) = oneshot::channel();
            waiters.push(tx);
            return Begin::Wait(rx);
        }
        let taken = self
            .bucket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(tokio::time::Instant::now());
        if let Err(retry_after) = taken {
            metrics::counter!(m::SENDS_RATE_LIMITED).increment(1);
            return Begin::Answer(Box::new(v1::CommandReply::with_retry_after(
                command_id,
                ErrorCode::RateLimited,
                format!(
                    "the session's send rate is exhausted; retry in {} ms",
                    retry_after.as_millis()
                ),
                retry_after,
            )));
        }
        state
            .in_flight
            .insert(command_id.to_owned(), (digest.to_owned(), Vec::new()));
        Begin::Go
    }

    /// The send ended with `reply`: repeats waiting get it; a final reply is kept for later
    /// repeats (a transient error is not: a repeat tries again).
    fn finish(&self, command_id: &str, reply: &v1::CommandReply) {
        let mut state = self.state();
        let Some((digest, waiters)) = state.in_flight.remove(command_id) else {
            return;
        };
        for waiter in waiters {
            let _ = waiter.send(replayed(reply.clone()));
        }
        let final_reply = reply.error().is_none_or(|e| {
            matches!(
                ErrorCode::try_from(e.code),
                Ok(ErrorCode::InvalidRecipient | ErrorCode::NoSuchUser)
            )
        });
        if final_reply {
            state.order.push_back(command_id.to_owned());
            state
                .done
                .insert(command_id.to_owned(), (digest, reply.clone()));
            while state.order.len() > REPLIES_KEPT {
                if let Some(old) = state.order.pop_front() {
                    state.done.remove(&old);
                }
            }
        }
    }
}

fn replayed(mut reply: v1::CommandReply) -> v1::CommandReply {
    reply.replayed = true;
    reply
}

fn reused(command_id: &str) -> v1::CommandReply {
    v1::CommandReply::with_error(
        command_id,
        ErrorCode::IdempotencyKeyReused,
        "this command_id was used for another message",
    )
}

/// What a send needs from its session.
#[derive(Clone)]
pub struct SendContext {
    pub desk: Arc<SendDesk>,
    pub control: DriverControl,
    pub emitter: Arc<Emitter>,
    pub clock: LeaseClock,
    pub client: async_nats::Client,
}

/// Handles one `send` request and answers it on its reply subject (in the request's
/// content type).
pub async fn handle(cx: SendContext, request: async_nats::Message) {
    let content_type = ContentType::from_header(content_type_of(request.headers.as_ref()))
        .unwrap_or(ContentType::Protobuf);
    let started = tokio::time::Instant::now();
    let reply = execute(&cx, &request).await;
    let outcome = match reply.error() {
        None => "sent",
        Some(e) => ErrorCode::try_from(e.code)
            .map(|c| c.as_str_name())
            .unwrap_or("UNKNOWN"),
    };
    metrics::counter!(m::SEND_COMMANDS, "outcome" => outcome).increment(1);
    if reply.error().is_none() {
        metrics::histogram!(m::SEND_SECONDS).record(started.elapsed().as_secs_f64());
    }
    let Some(reply_to) = request.reply.clone() else {
        debug!("a send without a reply subject: nobody waits for the answer");
        return;
    };
    let payload = match encode(&reply, content_type) {
        Ok(payload) => payload,
        Err(e) => {
            warn!(error = %e, "cannot encode a send reply");
            return;
        }
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(CONTENT_TYPE_HEADER, content_type.header_value());
    if let Err(e) = cx
        .client
        .publish_with_headers(reply_to, headers, payload.into())
        .await
    {
        warn!(error = %e, "answering a send failed");
    }
}

async fn execute(cx: &SendContext, request: &async_nats::Message) -> v1::CommandReply {
    let command = match decode_command_message(request) {
        Ok(command) => command,
        Err(e) => {
            return v1::CommandReply::with_error(String::new(), e.error_code(), e.to_string())
        }
    };
    let CommandBody::Send(send) = command.body else {
        return v1::CommandReply::with_error(
            command.body.command_id(),
            ErrorCode::MalformedCommand,
            "not a send command",
        );
    };
    let command_id = send.command_id.clone();
    let to = match Recipient::parse(&send.to) {
        Ok(to) => to,
        Err(e) => {
            return v1::CommandReply::with_error(
                command_id,
                ErrorCode::InvalidRecipient,
                e.to_string(),
            )
        }
    };
    if !cx.clock.is_live() {
        return v1::CommandReply::with_error(
            command_id,
            ErrorCode::NotLeased,
            "this worker's lease on the session ran out; retry with the same command_id",
        );
    }
    let digest = digest(&send);
    let waiting = match cx.desk.begin(&command_id, &digest) {
        Begin::Go => None,
        Begin::Answer(reply) => return *reply,
        Begin::Wait(rx) => Some(rx),
    };
    if let Some(rx) = waiting {
        return rx.await.unwrap_or_else(|_| {
            v1::CommandReply::with_error(
                command_id,
                ErrorCode::NotWorking,
                "the first send with this command_id was cut short; retry",
            )
        });
    }
    let reply = send_it(cx, &command_id, &digest, &to, send).await;
    cx.desk.finish(&command_id, &reply);
    reply
}

async fn send_it(
    cx: &SendContext,
    command_id: &str,
    digest: &str,
    to: &Recipient,
    send: v1::SendMessage,
) -> v1::CommandReply {
    let Some(content) = send.content else {
        return v1::CommandReply::with_error(command_id, ErrorCode::MalformedCommand, "no content");
    };
    let kind = content_kind(&content);
    let outgoing = outgoing(content, to);
    let reference = SendReference {
        key: command_id.to_owned(),
        digest: digest.to_owned(),
    };
    let sent = match cx
        .control
        .send_message(&send.to, outgoing, Some(reference))
        .await
    {
        Ok(sent) => sent,
        Err(e) => {
            debug!(command_id, error = %e, "send refused or failed");
            return v1::CommandReply::with_error(command_id, send_error_code(&e), e.to_string());
        }
    };
    let message_sent = v1::MessageSent {
        message_id: sent.id.clone(),
        chat: sent.chat.clone(),
        server_timestamp: sent
            .server_timestamp
            .map(|ms| timestamp(UNIX_EPOCH + Duration::from_millis(ms))),
        r#type: kind.to_owned(),
    };
    // The event first (in the session's event order), then the reply.
    let (acked, ack) = oneshot::channel();
    if cx.emitter.emit(
        Payload::MessageSent(v1::MessageSentEvent {
            command_id: command_id.to_owned(),
            sent: Some(message_sent.clone()),
        }),
        Some(acked),
    ) {
        match tokio::time::timeout(EVENT_ACK_WAIT, ack).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!(command_id, error = %e, "message_sent event not published"),
            Ok(Err(_)) | Err(_) => {
                warn!(command_id, "message_sent event not acked in time")
            }
        }
    }
    metrics::counter!(m::MESSAGES_OUT, "type" => kind).increment(1);
    v1::CommandReply::with_sent(command_id, message_sent)
}

/// A digest of what the command asks for (everything but its id).
fn digest(send: &v1::SendMessage) -> String {
    let mut body = send.clone();
    body.command_id.clear();
    let bytes = body.encode_to_vec();
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn content_kind(content: &Content) -> &'static str {
    match content {
        Content::Text(_) => "text",
        Content::Reaction(_) => "reaction",
        Content::Edit(_) => "edit",
        Content::Revoke(_) => "revoke",
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// The message for `content` to `to`.
fn outgoing(content: Content, to: &Recipient) -> Outgoing {
    let chat = to.jid().to_string();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    // A key of our own message in this chat.
    let own = |id: String| MessageKey {
        remote_jid: Some(chat.clone()),
        from_me: true,
        id,
        participant: None,
    };
    match content {
        Content::Text(text) => Outgoing::Text {
            text: text.body,
            reply: text.reply_to.map(|quoted| {
                Box::new(ReplyContext {
                    stanza_id: quoted.id,
                    participant: non_empty(quoted.sender),
                    remote_jid: None,
                    quoted: Some(wafleet_protocol::proto::e2e::Message {
                        conversation: Some(quoted.text),
                        ..Default::default()
                    }),
                })
            }),
        },
        Content::Reaction(reaction) => {
            let target = match non_empty(reaction.target_sender) {
                None => own(reaction.target_id),
                Some(sender) => MessageKey {
                    remote_jid: Some(chat.clone()),
                    from_me: false,
                    id: reaction.target_id,
                    participant: to.jid().is_group().then_some(sender),
                },
            };
            Outgoing::Encoded {
                message: encode_reaction(&target, &reaction.emoji, now_ms),
                stanza_type: "reaction".into(),
            }
        }
        Content::Edit(edit) => Outgoing::Encoded {
            message: encode_edit(&own(edit.target_id), &edit.body, now_ms),
            stanza_type: "text".into(),
        },
        Content::Revoke(revoke) => Outgoing::Encoded {
            message: encode_revoke(&own(revoke.target_id)),
            stanza_type: "text".into(),
        },
    }
}

/// The reply code of a failed send.
fn send_error_code(e: &ControlError) -> ErrorCode {
    match e {
        ControlError::InvalidRecipient(_) => ErrorCode::InvalidRecipient,
        ControlError::NoSuchUser(_) => ErrorCode::NoSuchUser,
        ControlError::ReferenceReused(_) => ErrorCode::IdempotencyKeyReused,
        ControlError::Timeout | ControlError::ConnectionLost => ErrorCode::SendUnconfirmed,
        ControlError::NotLoggedIn
        | ControlError::NotConnected
        | ControlError::NotLinking
        | ControlError::Ended => ErrorCode::NotWorking,
        ControlError::SendFailed(_) => ErrorCode::Unavailable,
        ControlError::InvalidPhone(_)
        | ControlError::PairingCodeForOtherPhone
        | ControlError::PairingCodeFailed(_)
        | ControlError::LogoutFailed(_)
        | ControlError::Storage(_) => ErrorCode::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_bucket_allows_a_burst_then_the_rate_and_says_when() {
        let start = tokio::time::Instant::now();
        let mut bucket = Bucket::new(
            SendRate {
                per_second: 10.0,
                burst: 3,
            },
            start,
        );
        for _ in 0..3 {
            assert_eq!(bucket.take(start), Ok(()));
        }
        let wait = bucket.take(start).expect_err("empty");
        assert_eq!(wait.as_millis(), 100);
        assert!(bucket.take(start + Duration::from_millis(50)).is_err());
        assert_eq!(bucket.take(start + Duration::from_millis(100)), Ok(()));
        // Idle for long: no more than the burst.
        let later = start + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(bucket.take(later), Ok(()));
        }
        assert!(bucket.take(later).is_err());
    }

    fn command(id: &str, text: &str) -> v1::SendMessage {
        v1::SendMessage {
            command_id: id.into(),
            to: "15550001111".into(),
            content: Some(Content::Text(v1::SendText {
                body: text.into(),
                reply_to: None,
            })),
        }
    }

    #[tokio::test]
    async fn the_desk_replays_finished_sends_joins_repeats_and_refuses_reuse() {
        let desk = SendDesk::new(SendRate::default());
        let d1 = digest(&command("c1", "hello"));
        // The digest covers the body, not the id.
        assert_eq!(d1, digest(&command("c2", "hello")));
        assert_ne!(d1, digest(&command("c1", "other")));
        assert!(matches!(desk.begin("c1", &d1), Begin::Go));
        let Begin::Wait(repeat) = desk.begin("c1", &d1) else {
            panic!("a repeat in flight waits")
        };
        let Begin::Answer(reuse) = desk.begin("c1", "other") else {
            panic!("reuse is answered")
        };
        assert_eq!(
            reuse.error().map(|e| e.code),
            Some(ErrorCode::IdempotencyKeyReused as i32)
        );
        let sent = v1::CommandReply::with_sent(
            "c1",
            v1::MessageSent {
                message_id: "3EB0AA".into(),
                ..Default::default()
            },
        );
        desk.finish("c1", &sent);
        let joined = repeat.await.expect("answered");
        assert!(joined.replayed);
        assert_eq!(joined.outcome, sent.outcome);
        let Begin::Answer(later) = desk.begin("c1", &d1) else {
            panic!("finished sends are replayed")
        };
        assert!(later.replayed && later.outcome == sent.outcome);
        // A transient failure is not kept: a repeat sends.
        assert!(matches!(desk.begin("c2", &d1), Begin::Go));
        desk.finish(
            "c2",
            &v1::CommandReply::with_error("c2", ErrorCode::NotWorking, "reconnecting"),
        );
        assert!(matches!(desk.begin("c2", &d1), Begin::Go));
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_limited_send_says_when_to_retry_and_is_not_kept() {
        let desk = SendDesk::new(SendRate {
            per_second: 2.0,
            burst: 1,
        });
        assert!(matches!(desk.begin("a", "d"), Begin::Go));
        let Begin::Answer(limited) = desk.begin("b", "d") else {
            panic!("limited")
        };
        let error = limited.error().expect("an error");
        assert_eq!(error.code, ErrorCode::RateLimited as i32);
        let retry = error.retry_after.as_ref().expect("retry_after");
        assert_eq!((retry.seconds, retry.nanos), (0, 500_000_000));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(matches!(desk.begin("b", "d"), Begin::Go));
    }
}
