//! The operations endpoint every AstraMQ process serves: `/metrics`
//! (Prometheus text format), `/healthz` (the process is alive) and
//! `/readyz` (it can take clients: 200, or 503 with the reason).
//!
//! HTTP/1.1 through hyper, one task per connection, bounded by a read
//! timeout; it shares the process's runtime with the MQTT traffic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// What a process exposes on its operations endpoint.
pub trait OpsSource: Send + Sync + 'static {
    /// The metrics in Prometheus text exposition format.
    fn metrics_text(&self) -> String;
    /// `Ok` when the process can take clients; otherwise why not.
    fn readiness(&self) -> Result<(), String>;
}

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for metrics on {addr}: {source}")]
pub struct OpsHttpError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `addr` and serves the endpoints in a background task; returns the
/// bound address (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    source: Arc<dyn OpsSource>,
) -> Result<SocketAddr, OpsHttpError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| OpsHttpError { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| OpsHttpError { addr, source })?;
    tokio::spawn(accept_loop(listener, source));
    Ok(local)
}

async fn accept_loop(listener: TcpListener, source: Arc<dyn OpsSource>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "metrics endpoint accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let source = source.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let source = source.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&*source, &request)) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(%error, "metrics connection ended with an error");
            }
        });
    }
}

fn respond(source: &dyn OpsSource, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match request.uri().path() {
        "/metrics" => {
            let mut response = text(StatusCode::OK, source.metrics_text());
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match source.readiness() {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}\n"),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}
