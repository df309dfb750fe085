//! The HTTP control API (JSON), for demos and tests in other languages:
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `POST /phones` | `{"phone":"15551234567"}` | the phone (`201`) |
//! | `POST /phones/{phone}/scan` | `{"qr":"…"}` | `{"device":"<jid>"}` |
//! | `POST /phones/{phone}/pairing-code` | `{"code":"ABCD-EFGH"}` | `{"device":"<jid>"}` |
//! | `POST /phones/{phone}/tamper` | `{"tamper":"none\|hmac\|account_signature"}` | `{}` |
//! | `GET /phones/{phone}/inbox` | | `{"inbox":[<node JSON>…]}`: what reached the phone, raw |
//! | `POST /phones/{phone}/send` | `{"to":"1555…\|<user JID>\|<group JID>","text":"…"}` | `{"id":"<message id>"}` once the server acked it |
//! | `GET /phones/{phone}/messages` | | `{"messages":[{"id","chat","sender","from_me","timestamp","type","text","error"}…],"receipts":[{"ids","chat","sender","type","timestamp"}…]}`: what the phone decrypted, and the receipts for what it sent |
//! | `POST /devices/{jid}/unlink` | | `{}` |
//! | `POST /devices/{jid}/drop` | | `{"dropped":N}` |
//! | `GET /counters` | | [`Counters`](crate::Counters) |
//! | `POST /groups` | `{"creator":"1555…","subject":"…","participants":["1555…"][,"addressing_mode":"pn\|lid"]}` | the group (`201`) |
//! | `GET /groups/{jid}` | | the group |
//! | `POST /groups/{jid}/participants` | `{"action":"add\|remove\|promote\|demote","participants":["1555…"]}` | `{"participants":[{"jid","status"}]}` |
//!
//! Errors are `{"error":{"code":"…","message":"…"}}` with a 4xx/5xx status.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use wafleet_protocol::jid::Jid;

use crate::{GroupAction, GroupAddressing, SimError, Simulator, Tamper};

/// The router over a simulator handle.
pub fn router(sim: Simulator) -> Router {
    Router::new()
        .route("/phones", post(add_phone))
        .route("/phones/{phone}/scan", post(scan))
        .route("/phones/{phone}/pairing-code", post(pairing_code))
        .route("/phones/{phone}/tamper", post(tamper))
        .route("/phones/{phone}/inbox", get(inbox))
        .route("/phones/{phone}/send", post(phone_send))
        .route("/phones/{phone}/messages", get(phone_messages))
        .route("/devices/{jid}/unlink", post(unlink))
        .route("/devices/{jid}/drop", post(drop_connections))
        .route("/counters", get(counters))
        .route("/groups", post(create_group))
        .route("/groups/{jid}", get(group))
        .route("/groups/{jid}/participants", post(group_participants))
        .fallback(not_found)
        .with_state(sim)
}

/// An error answer.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl From<SimError> for ApiError {
    fn from(e: SimError) -> ApiError {
        let (status, code) = e.status_and_code();
        ApiError {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code,
            message: e.to_string(),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: e.body_text(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

fn body<T>(payload: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    Ok(payload?.0)
}

#[derive(Deserialize)]
struct NewPhone {
    phone: String,
}

#[derive(Deserialize)]
struct Scan {
    qr: String,
}

#[derive(Deserialize)]
struct Code {
    code: String,
}

#[derive(Deserialize)]
struct PhoneSend {
    to: String,
    text: String,
}

#[derive(Deserialize)]
struct SetTamper {
    tamper: Tamper,
}

async fn add_phone(
    State(sim): State<Simulator>,
    payload: Result<Json<NewPhone>, JsonRejection>,
) -> ApiResult {
    let info = sim.add_phone(&body(payload)?.phone)?;
    Ok((StatusCode::CREATED, Json(info.to_json())).into_response())
}

async fn scan(
    State(sim): State<Simulator>,
    Path(phone): Path<String>,
    payload: Result<Json<Scan>, JsonRejection>,
) -> ApiResult {
    let qr = body(payload)?.qr;
    let device = sim.scan_qr(&phone, &qr).await?;
    Ok(Json(json!({"device": device.to_string()})).into_response())
}

async fn pairing_code(
    State(sim): State<Simulator>,
    Path(phone): Path<String>,
    payload: Result<Json<Code>, JsonRejection>,
) -> ApiResult {
    let code = body(payload)?.code;
    let device = sim.enter_pairing_code(&phone, &code).await?;
    Ok(Json(json!({"device": device.to_string()})).into_response())
}

async fn tamper(
    State(sim): State<Simulator>,
    Path(phone): Path<String>,
    payload: Result<Json<SetTamper>, JsonRejection>,
) -> ApiResult {
    sim.set_tamper(&phone, body(payload)?.tamper)?;
    Ok(Json(json!({})).into_response())
}

fn device_jid(jid: &str) -> Result<Jid, ApiError> {
    jid.parse::<Jid>()
        .map_err(|e| ApiError::from(SimError::BadJid(e.to_string())))
}

async fn unlink(State(sim): State<Simulator>, Path(jid): Path<String>) -> ApiResult {
    sim.unlink(&device_jid(&jid)?).await?;
    Ok(Json(json!({})).into_response())
}

async fn drop_connections(State(sim): State<Simulator>, Path(jid): Path<String>) -> ApiResult {
    let dropped = sim.drop_connections(&device_jid(&jid)?);
    Ok(Json(json!({ "dropped": dropped })).into_response())
}

async fn inbox(State(sim): State<Simulator>, Path(phone): Path<String>) -> ApiResult {
    let nodes: Vec<Value> = sim
        .phone_inbox(&phone)?
        .iter()
        .map(wafleet_protocol::binary::json::to_value)
        .collect();
    Ok(Json(json!({ "inbox": nodes })).into_response())
}

async fn phone_send(
    State(sim): State<Simulator>,
    Path(phone): Path<String>,
    payload: Result<Json<PhoneSend>, JsonRejection>,
) -> ApiResult {
    let request = body(payload)?;
    let id = sim.phone_send_text(&phone, &request.to, &request.text)?;
    Ok(Json(json!({ "id": id })).into_response())
}

async fn phone_messages(State(sim): State<Simulator>, Path(phone): Path<String>) -> ApiResult {
    let messages: Vec<Value> = sim
        .phone_messages(&phone)?
        .iter()
        .map(|m| m.to_json())
        .collect();
    let receipts: Vec<Value> = sim
        .phone_receipts(&phone)?
        .iter()
        .map(|r| r.to_json())
        .collect();
    Ok(Json(json!({ "messages": messages, "receipts": receipts })).into_response())
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: "not_found",
        message: "no such endpoint".to_owned(),
    }
}

async fn counters(State(sim): State<Simulator>) -> Json<Value> {
    Json(serde_json::to_value(sim.counters()).unwrap_or(Value::Null))
}

#[derive(Deserialize)]
struct NewGroup {
    creator: String,
    subject: String,
    #[serde(default)]
    participants: Vec<String>,
    #[serde(default)]
    addressing_mode: Option<GroupAddressing>,
}

#[derive(Deserialize)]
struct ParticipantsChange {
    action: GroupAction,
    participants: Vec<String>,
}

fn group_jid(jid: &str) -> Result<Jid, ApiError> {
    jid.parse::<Jid>()
        .map_err(|e| ApiError::from(SimError::BadJid(e.to_string())))
}

async fn create_group(
    State(sim): State<Simulator>,
    payload: Result<Json<NewGroup>, JsonRejection>,
) -> ApiResult {
    let request = body(payload)?;
    let members: Vec<&str> = request.participants.iter().map(String::as_str).collect();
    let group = match request.addressing_mode {
        Some(addressing) => {
            sim.create_group_with(&request.creator, &request.subject, &members, addressing)?
        }
        None => sim.create_group(&request.creator, &request.subject, &members)?,
    };
    Ok((StatusCode::CREATED, Json(group.to_json())).into_response())
}

async fn group(State(sim): State<Simulator>, Path(jid): Path<String>) -> ApiResult {
    let group = sim.group(&group_jid(&jid)?)?;
    Ok(Json(group.to_json()).into_response())
}

async fn group_participants(
    State(sim): State<Simulator>,
    Path(jid): Path<String>,
    payload: Result<Json<ParticipantsChange>, JsonRejection>,
) -> ApiResult {
    let request = body(payload)?;
    let phones: Vec<&str> = request.participants.iter().map(String::as_str).collect();
    let outcomes = sim.update_group(&group_jid(&jid)?, request.action, &phones)?;
    Ok(Json(json!({ "participants": outcomes })).into_response())
}
