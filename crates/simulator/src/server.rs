//! The accept loop: one task per WebSocket on `/ws/chat`.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tracing::{debug, info};

use crate::connection::{self, ServerIdentity};
use crate::state::Shared;

/// The WebSocket path, as WhatsApp's.
pub const WS_PATH: &str = "/ws/chat";

/// Accepts connections until `shutdown` turns true, then waits for the connection tasks
/// (which see the same signal) to end.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Shared,
    identity: Arc<ServerIdentity>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        debug!(error = %e, "accept failed");
                        continue;
                    }
                };
                let shared = shared.clone();
                let identity = identity.clone();
                let shutdown = shutdown.clone();
                tasks.spawn(async move {
                    let _ = stream.set_nodelay(true);
                    match tokio_tungstenite::accept_hdr_async(stream, check_path).await {
                        Ok(ws) => connection::run(ws, shared, identity, shutdown).await,
                        Err(e) => debug!(%peer, error = %e, "WebSocket upgrade refused"),
                    }
                });
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    info!("simulator stopping");
    while tasks.join_next().await.is_some() {}
}

/// Only `/ws/chat` is upgraded; anything else gets 404.
// The signature is tungstenite's callback type; its error type is its HTTP response.
#[allow(clippy::result_large_err)]
fn check_path(request: &Request, response: Response) -> Result<Response, ErrorResponse> {
    if request.uri().path() == WS_PATH {
        Ok(response)
    } else {
        let mut refused =
            ErrorResponse::new(Some(format!("no WebSocket at {}", request.uri().path())));
        *refused.status_mut() = StatusCode::NOT_FOUND;
        Err(refused)
    }
}
