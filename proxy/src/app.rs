//! The L4 application pingora runs for every accepted client connection.
//!
//! One connection, start to end ([`MqttProxy::process_new`]):
//!
//! 0. **Admit**: before anything is read, the socket must fit under the
//!    connection caps and rate ([`crate::admission`]); otherwise it is
//!    closed at once and the refusal counted. The permit is held until the
//!    connection ends, whatever the stage.
//! 1. **Accept**: read the first packet within `--connect-timeout` and
//!    `--max-connect-size`; it must be a well-formed CONNECT
//!    ([`crate::connect`]), otherwise close (CONNACK 0x01 first for a known
//!    protocol at an unknown level) and count the reject. No node is dialled.
//! 2. **Route**: order the live backends ([`crate::balance`]) and dial them
//!    in turn, each within `--dial-timeout-ms`; a refused or timed-out dial
//!    is counted and the next backend tried. If none answers, the client
//!    gets a CONNACK "server unavailable" in its protocol's words (3.1.1:
//!    return code 0x03; 5.0: reason code 0x88) and is closed.
//! 3. **Pass through**: optionally a PROXY v2 header, then the CONNECT bytes
//!    exactly as received (and whatever the client sent after them), then
//!    [`crate::relay`] copies both ways until both sides close.
//!
//! On the TLS and WebSocket listeners (`--tls-listen`, `--ws-listen`,
//! `--wss-listen`) the handshakes (TLS, the `/mqtt` upgrade, or both) come
//! between admission and accept, within the same `--connect-timeout`
//! deadline as the first packet; a failed handshake (plain MQTT, an
//! untrusted client certificate, a wrong path — answered 404 — or no
//! `mqtt` subprotocol — answered 400) is closed and counted. The steps
//! after it run on the unwrapped byte stream, the same code
//! (monomorphised: the plain path keeps its stream type) as for a plain
//! connection: the CONNECT is read and the node picked exactly as for TCP,
//! and the node gets plain MQTT over TCP.
//!
//! 4. **End**: a reset by the client resets the node connection (SO_LINGER
//!    0), so the node sees the abrupt end as abrupt; a failure on the node
//!    side closes the client at once. When the proxy shuts down, every
//!    connection is closed promptly (clients reconnect elsewhere).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use astramq_shared::log_text::untrusted;
use astramq_shared::mqtt_connect::Refusal;
use astramq_shared::tls::ServerTls;
use astramq_shared::ws::{self, WsLimits};
use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::admission::Admission;
use crate::backends::{Backend, BackendSet};
use crate::balance::Balancer;
use crate::connect::{self, ConnectInfo};
use crate::metrics::ProxyMetrics;
use crate::relay::{Ended, Relay, Side};

/// Per-connection limits and options, from the configuration.
#[derive(Debug, Clone)]
pub struct ConnectionOptions {
    /// Time allowed for the whole first packet, from accept: a deadline,
    /// not an idle timer, so a client dribbling bytes is cut as surely as
    /// a silent one.
    pub connect_timeout: Duration,
    /// Largest first packet accepted, in bytes.
    pub max_connect_size: usize,
    /// Time allowed for one TCP connect to a node.
    pub dial_timeout: Duration,
    /// Prepend a PROXY protocol v2 header on node connections.
    pub proxy_protocol: bool,
    /// Bounds on WebSocket messages from clients.
    pub ws_limits: WsLimits,
}

/// What clients speak on a listener, outside MQTT.
#[derive(Debug, Clone)]
pub enum ClientTransport {
    /// MQTT straight over TCP (`--listen`).
    Plain,
    /// MQTT inside TLS (`--tls-listen`), with its certificates.
    Tls(Arc<ServerTls>),
    /// MQTT in WebSocket binary messages (`--ws-listen`).
    Ws,
    /// MQTT in WebSocket binary messages inside TLS (`--wss-listen`).
    Wss(Arc<ServerTls>),
}

impl ClientTransport {
    /// The readiness line's scheme (`astramq-proxy listening on SCHEME://ADDR`).
    pub fn scheme(&self) -> &'static str {
        match self {
            ClientTransport::Plain => "mqtt",
            ClientTransport::Tls(_) => "mqtts",
            ClientTransport::Ws => "ws",
            ClientTransport::Wss(_) => "wss",
        }
    }
}

/// The proxy application: shared by every connection of the service.
pub struct MqttProxy {
    /// Connection caps and rate, checked on accept.
    pub admission: Arc<Admission>,
    /// Where clients may be sent (live brokers or the static list).
    pub backends: Arc<BackendSet>,
    /// In which order to try them.
    pub balancer: Balancer,
    /// Counters and gauges; also the least-connections load.
    pub metrics: Arc<ProxyMetrics>,
    /// Timeouts, limits and the PROXY protocol switch.
    pub options: ConnectionOptions,
    /// What the listener of this service speaks.
    pub transport: ClientTransport,
}

/// What the proxy needs of a client connection: pingora's accepted
/// stream, or TLS over it.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + ?Sized> ClientStream for T {}

/// A node connection ready to relay to.
struct Dialled {
    backend: Backend,
    stream: TcpStream,
}

#[async_trait]
impl ServerApp for MqttProxy {
    async fn process_new(
        self: &Arc<Self>,
        client: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let digest = client.get_socket_digest();
        let peer = digest
            .as_ref()
            .and_then(|d| d.peer_addr())
            .and_then(|a| a.as_inet().copied());
        let local = digest
            .as_ref()
            .and_then(|d| d.local_addr())
            .and_then(|a| a.as_inet().copied());
        let _permit = match self.admission.admit(peer.map(|p| p.ip())) {
            Ok(permit) => permit,
            Err(refusal) => {
                // Debug only: under a flood this would be a line per socket.
                tracing::debug!(
                    ?peer,
                    reason = refusal.reason(),
                    "client socket refused: {refusal}"
                );
                self.metrics.refused(refusal);
                return None; // dropping `client` closes it
            }
        };
        let span = tracing::info_span!("client", peer = peer.map(tracing::field::display));
        let mut shutdown = shutdown.clone();
        let serve = self.serve_transport(client, peer, local).instrument(span);
        tokio::select! {
            biased; // the connection's own work first; shutdown is rare
            () = serve => {}
            _ = shutdown.wait_for(|stopping| *stopping) => {
                tracing::debug!(?peer, "proxy shutting down: closing client connection");
            }
        }
        None
    }
}

impl MqttProxy {
    /// [`Self::serve`] on the plain stream, or on what the TLS and
    /// WebSocket handshakes (within the connect timeout, together) unwrap.
    async fn serve_transport(
        &self,
        mut client: Stream,
        peer: Option<SocketAddr>,
        local: Option<SocketAddr>,
    ) {
        let deadline = tokio::time::Instant::now() + self.options.connect_timeout;
        match &self.transport {
            ClientTransport::Plain => self.serve(client.as_mut(), peer, local).await,
            // The wrapped paths are boxed: their streams carry buffers, and
            // an unboxed arm would size every plain connection's task for
            // them (18.5 KB per idle socket unboxed, 5.9 KB boxed, measured
            // with 3,000 idle sockets in `proxy_hostile`).
            ClientTransport::Tls(tls) => {
                Box::pin(async {
                    if let Some(mut stream) = self.tls_handshake(tls, client, deadline).await {
                        self.serve(&mut stream, peer, local).await;
                    }
                })
                .await
            }
            ClientTransport::Ws => {
                Box::pin(async {
                    if let Some(mut stream) = self.ws_handshake(client, deadline).await {
                        self.serve(&mut stream, peer, local).await;
                    }
                })
                .await
            }
            ClientTransport::Wss(tls) => {
                Box::pin(async {
                    let Some(stream) = self.tls_handshake(tls, client, deadline).await else {
                        return;
                    };
                    if let Some(mut stream) = self.ws_handshake(stream, deadline).await {
                        self.serve(&mut stream, peer, local).await;
                    }
                })
                .await
            }
        }
    }

    /// The TLS handshake until `deadline`; a failure is counted.
    async fn tls_handshake(
        &self,
        tls: &ServerTls,
        client: Stream,
        deadline: tokio::time::Instant,
    ) -> Option<impl ClientStream> {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tls.accept(client, left).await {
            Ok(stream) => Some(stream),
            Err(error) => {
                tracing::debug!(%error, "client closed: TLS handshake failed");
                self.metrics.tls_handshake_failed();
                None
            }
        }
    }

    /// The WebSocket upgrade until `deadline`; a failure is counted.
    async fn ws_handshake<C: ClientStream>(
        &self,
        client: C,
        deadline: tokio::time::Instant,
    ) -> Option<ws::WsStream<C>> {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws::accept(client, self.options.ws_limits, left).await {
            Ok(stream) => Some(stream),
            Err(error) => {
                tracing::debug!(%error, "client closed: WebSocket handshake failed");
                self.metrics.ws_handshake_failed();
                None
            }
        }
    }

    /// Everything after accept, for one client; returns when the connection
    /// should be closed (dropping the streams closes them).
    async fn serve<C: ClientStream + ?Sized>(
        &self,
        client: &mut C,
        peer: Option<SocketAddr>,
        local: Option<SocketAddr>,
    ) {
        let mut first = Vec::new();
        let connect = connect::read_connect(
            client,
            &mut first,
            self.options.max_connect_size,
            self.options.connect_timeout,
        )
        .await;
        let info = match connect {
            Ok((info, _len)) => info,
            Err(reject) => {
                tracing::debug!(reason = reject.reason(), error = %reject, "client rejected");
                self.metrics.reject(&reject);
                if let Some(code) = reject.connack_code() {
                    let _ = write_and_flush(client, &[0x20, 0x02, 0x00, code]).await;
                }
                return;
            }
        };
        let span = tracing::info_span!(
            "mqtt",
            client_id = %untrusted(&info.client_id),
            username = %untrusted(info.username.as_deref().unwrap_or("")),
        );
        self.route(client, info, first, peer, local)
            .instrument(span)
            .await;
    }

    /// Dials a node for the client and relays until the connection ends.
    async fn route<C: ClientStream + ?Sized>(
        &self,
        client: &mut C,
        info: ConnectInfo,
        first: Vec<u8>,
        peer: Option<SocketAddr>,
        local: Option<SocketAddr>,
    ) {
        let Some(Dialled {
            backend,
            stream: mut node,
        }) = self.dial(&info.client_id).await
        else {
            tracing::warn!("no backend reachable: answering CONNACK server unavailable");
            self.metrics.no_backend();
            let answer = Refusal::ServerUnavailable.connack(info.level);
            let _ = write_and_flush(client, &answer).await;
            return;
        };
        let (meters, _active) = self.metrics.routed(&backend.node_id);
        tracing::info!(backend = %backend.node_id, node_addr = %backend.mqtt_addr, "client routed");
        let started = Instant::now();

        let mut preamble = Vec::with_capacity(first.len() + 52);
        if self.options.proxy_protocol {
            astramq_shared::proxy_v2::write_header(&mut preamble, peer, local);
        }
        preamble.extend_from_slice(&first);
        if let Err(error) = node.write_all(&preamble).await {
            tracing::warn!(backend = %backend.node_id, %error, "writing CONNECT to the node failed");
            return;
        }
        meters.upstream.inc_by(first.len() as u64);

        let ended = Relay::new(client, &mut node, meters.upstream, meters.downstream).await;
        let elapsed = started.elapsed();
        match ended {
            Ended::Closed => {
                tracing::info!(backend = %backend.node_id, ?elapsed, "client connection closed")
            }
            Ended::HalfCloseTimeout => tracing::info!(
                backend = %backend.node_id,
                ?elapsed,
                "one side closed and the other did not: connection cut"
            ),
            Ended::Failed(Side::Client, error) => {
                tracing::info!(backend = %backend.node_id, %error, ?elapsed, "client connection failed: resetting the node side");
                // SO_LINGER 0: closing sends RST, as the client's side did.
                // (Deprecated because a non-zero linger blocks on drop; a
                // zero linger never does.)
                #[allow(deprecated)]
                let _ = node.set_linger(Some(Duration::ZERO));
            }
            Ended::Failed(Side::Node, error) => {
                tracing::info!(backend = %backend.node_id, %error, ?elapsed, "node connection failed: closing the client");
            }
        }
    }

    /// Tries the backends in balancing order; the first that accepts wins.
    async fn dial(&self, client_id: &str) -> Option<Dialled> {
        let backends = self.backends.snapshot();
        let order = self
            .balancer
            .order(&backends, client_id, |b| self.metrics.active(&b.node_id));
        for i in order {
            let backend = &backends[i];
            let started = Instant::now();
            let attempt = tokio::time::timeout(
                self.options.dial_timeout,
                TcpStream::connect(backend.mqtt_addr),
            )
            .await;
            let error = match attempt {
                Ok(Ok(stream)) => {
                    self.metrics
                        .dial_duration
                        .observe(started.elapsed().as_secs_f64());
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(%error, "TCP_NODELAY on the node connection failed");
                    }
                    return Some(Dialled {
                        backend: backend.clone(),
                        stream,
                    });
                }
                Ok(Err(error)) => error.to_string(),
                Err(_) => format!("timed out after {:?}", self.options.dial_timeout),
            };
            tracing::warn!(backend = %backend.node_id, node_addr = %backend.mqtt_addr, %error, "dialling backend failed; trying the next");
            self.metrics
                .dial_failures
                .with_label_values(&[&backend.node_id])
                .inc();
        }
        None
    }
}

/// Writes a short answer and pushes it out (the accepted stream buffers).
async fn write_and_flush<C: ClientStream + ?Sized>(
    client: &mut C,
    bytes: &[u8],
) -> std::io::Result<()> {
    client.write_all(bytes).await?;
    client.flush().await
}
