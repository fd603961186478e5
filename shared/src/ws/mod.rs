//! MQTT over WebSocket for client listeners, shared by the node and the
//! proxy (`--ws-listen`, and `--wss-listen` inside TLS).
//!
//! [`accept`] runs the server side of the HTTP upgrade on a stream (a TCP
//! socket, a TLS stream, the proxy's accepted stream) and returns a
//! [`WsStream`]: the MQTT bytes carried in binary messages, as a plain
//! `AsyncRead + AsyncWrite` byte stream, so the code that frames MQTT over
//! TCP frames it over WebSocket unchanged.
//!
//! Guaranteed:
//! - Only `GET /mqtt` (any query string) offering the `mqtt` subprotocol in
//!   `Sec-WebSocket-Protocol` is upgraded, and the answer names `mqtt`.
//!   Another path gets `404 Not Found`; a missing or unknown subprotocol
//!   `400 Bad Request`; anything that is not an HTTP upgrade request
//!   (plain MQTT bytes, say) is closed without an answer. In every case
//!   nothing reaches MQTT.
//! - The handshake, like a TLS one, must finish within the caller's
//!   timeout, and tungstenite reads at most 64 KiB of request headers.
//! - Memory per connection is bounded: an incoming message or frame larger
//!   than [`WsLimits::max_message_size`] ends the connection (close 1009)
//!   before it is buffered whole; the read buffer is small (4 KiB), and
//!   writes are framed [`stream::MAX_OUT_MESSAGE`] bytes at a time.
//! - Packet boundaries do not matter: one MQTT packet may span messages
//!   and frames, one message may hold several packets.
//! - Pings are answered (by tungstenite), pongs ignored, a close from the
//!   client is answered and reads end-of-stream; a text message is a
//!   protocol error for MQTT: close 1003, then the read fails.
//!
//! Not guaranteed: compression (permessage-deflate is not negotiated),
//! HTTP/2 WebSocket (RFC 8441), or `Origin` checks (a browser page from any
//! origin may connect, as with plain MQTT; authentication is what guards
//! the broker).

mod stream;
#[cfg(test)]
mod tests;

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub use stream::{WsStream, MAX_OUT_MESSAGE};

/// The only path upgraded.
pub const PATH: &str = "/mqtt";

/// The subprotocol MQTT over WebSocket uses (MQTT 3.1.1 section 6).
pub const SUBPROTOCOL: &str = "mqtt";

/// The largest MQTT fixed header: a type byte and four length bytes.
const MAX_FIXED_HEADER: usize = 5;

/// tungstenite's read buffer (allocated per connection up front).
const READ_BUFFER: usize = 4 * 1024;

/// Bounds on what a client may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsLimits {
    /// Largest message (and frame) accepted, in bytes of payload.
    pub max_message_size: usize,
}

impl WsLimits {
    /// Limits that let one MQTT packet of `max_packet_size` bytes (the
    /// whole packet, as the node's `--max-packet-size` counts it) arrive in
    /// one message, and nothing bigger.
    pub fn for_max_packet_size(max_packet_size: usize) -> WsLimits {
        WsLimits {
            max_message_size: max_packet_size.saturating_add(MAX_FIXED_HEADER),
        }
    }

    fn config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            // Eager: a write goes to the socket at once, as on TCP.
            .write_buffer_size(0)
            .max_message_size(Some(self.max_message_size))
            .max_frame_size(Some(self.max_message_size))
    }
}

/// Why a WebSocket handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum WsHandshakeError {
    /// Not an upgrade to `/mqtt` with subprotocol `mqtt` (answered with an
    /// HTTP error when it was HTTP at all), or the socket failed.
    #[error("WebSocket handshake failed: {0}")]
    Failed(#[from] tokio_tungstenite::tungstenite::Error),
    /// The client did not finish the handshake in time.
    #[error("WebSocket handshake timed out")]
    TimedOut,
}

impl WsHandshakeError {
    /// The HTTP status the client was answered with, if any (404, 400).
    pub fn status(&self) -> Option<u16> {
        match self {
            WsHandshakeError::Failed(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Some(response.status().as_u16())
            }
            _ => None,
        }
    }
}

/// Runs the server side of the upgrade on `stream` within `timeout`.
pub async fn accept<S>(
    stream: S,
    limits: WsLimits,
    timeout: Duration,
) -> Result<WsStream<S>, WsHandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        check_request,
        Some(limits.config()),
    );
    match tokio::time::timeout(timeout, handshake).await {
        Ok(result) => Ok(WsStream::new(result?)),
        Err(_) => Err(WsHandshakeError::TimedOut),
    }
}

/// Accepts `GET /mqtt` offering subprotocol `mqtt`, and names it in the
/// answer; refuses anything else with an HTTP error.
// The signature is tungstenite's `Callback`: its error is a whole response.
#[allow(clippy::result_large_err)]
fn check_request(request: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    if request.uri().path() != PATH {
        return Err(refusal(
            StatusCode::NOT_FOUND,
            "not found: MQTT is at /mqtt\n",
        ));
    }
    if !offers_mqtt(request) {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Protocol must offer mqtt\n",
        ));
    }
    response.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    Ok(response)
}

/// Whether any `Sec-WebSocket-Protocol` header lists `mqtt`.
fn offers_mqtt(request: &Request) -> bool {
    request
        .headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|offered| offered.trim() == SUBPROTOCOL)
}

/// An HTTP error answer with a short text body.
fn refusal(status: StatusCode, body: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(body.to_owned()));
    *response.status_mut() = status;
    response
}
