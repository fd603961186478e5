//! The accept loop and graceful shutdown.
//!
//! One loop accepts on every listening socket: plain MQTT (`--listen`) and,
//! when configured, TLS (`--tls-listen`), WebSocket (`--ws-listen`) and
//! WebSocket inside TLS (`--wss-listen`). They share the limits below, so
//! a client counts the same against them whichever port it uses. A TLS or
//! WebSocket connection's handshake runs in its own task, within one
//! `--connect-timeout` deadline (for `--wss-listen`, TLS and the upgrade
//! together), so idle sockets cannot pile up; a failed handshake — plain
//! MQTT sent to a TLS or WebSocket port, an untrusted client certificate,
//! a path other than `/mqtt` (answered 404), no `mqtt` subprotocol
//! (answered 400) — is closed and counted as a `tls_handshake` or
//! `ws_handshake` refusal. After the handshake the connection is served by
//! the same session code as a TCP one: the same packet size limit (which
//! also bounds WebSocket messages), keep-alive, authentication and ACL.
//!
//! Every connection gets its own task. Four things bound and track them:
//! [`Admission`] closes connections over the per-IP and per-second limits
//! before anything is read, a semaphore caps concurrent connections, a
//! `watch` channel tells every
//! session to stop, and an `mpsc` sender cloned into each task tells the
//! listener, by being dropped, when the last session has finished.
//!
//! Listeners are bound by [`bind`] with a backlog of [`BACKLOG`]: with the
//! operating system's usual 128, a burst of connections (a proxy dialling
//! for hundreds of clients at once) overflowed the queue, the kernel
//! dropped the SYNs and each dropped client waited a second for its retry.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use astramq_shared::tls::ServerTls;
use astramq_shared::ws::{self, WsLimits};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;

use crate::broker::Broker;
use crate::config::NodeConfig;
use crate::limits::{Admission, NotAdmitted};
use crate::session;
use crate::stats::{LimitReason, Refusal};
use crate::transport::Transport;

/// Connections the kernel queues for a listener before `accept` (capped by
/// `net.core.somaxconn`, 4096 by default on current Linux).
pub const BACKLOG: u32 = 4096;

/// Binds a client listener on `addr` with [`BACKLOG`] (and SO_REUSEADDR,
/// as the standard library sets it, so a restart finds its port free).
pub fn bind_socket(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// What clients speak on a listening socket.
#[derive(Debug, Clone)]
pub enum Protocol {
    /// MQTT over TCP (`--listen`).
    Mqtt,
    /// MQTT over TLS (`--tls-listen`), with its certificates.
    MqttTls(Arc<ServerTls>),
    /// MQTT over WebSocket (`--ws-listen`).
    Ws,
    /// MQTT over WebSocket inside TLS (`--wss-listen`).
    Wss(Arc<ServerTls>),
}

impl Protocol {
    /// The scheme of the readiness line (`astramq-node listening on SCHEME://ADDR`).
    pub fn scheme(&self) -> &'static str {
        match self {
            Protocol::Mqtt => "mqtt",
            Protocol::MqttTls(_) => "mqtts",
            Protocol::Ws => "ws",
            Protocol::Wss(_) => "wss",
        }
    }
}

/// The sockets clients connect to, each with what it speaks.
pub struct Listeners {
    /// Bound sockets; at least the plain one.
    pub sockets: Vec<(TcpListener, Protocol)>,
}

/// Binds every configured listener, the plain one first, each with what
/// it speaks and its bound address (port 0 is resolved).
pub async fn bind(config: &NodeConfig) -> anyhow::Result<Vec<(TcpListener, Protocol, SocketAddr)>> {
    let mut wanted = vec![(config.listen, Protocol::Mqtt)];
    if let Some(tls) = &config.tls {
        wanted.push((tls.listen, Protocol::MqttTls(tls.tls.clone())));
    }
    if let Some(addr) = config.ws_listen {
        wanted.push((addr, Protocol::Ws));
    }
    if let Some(wss) = &config.wss {
        wanted.push((wss.listen, Protocol::Wss(wss.tls.clone())));
    }
    let mut bound = Vec::with_capacity(wanted.len());
    for (addr, protocol) in wanted {
        let scheme = protocol.scheme();
        let socket = bind_socket(addr)
            .with_context(|| format!("binding the {scheme}:// listener on {addr}"))?;
        let local = socket
            .local_addr()
            .with_context(|| format!("reading the bound {scheme}:// address"))?;
        bound.push((socket, protocol, local));
    }
    Ok(bound)
}

/// Waits for a connection on any of the sockets.
fn poll_accept(
    sockets: &[(TcpListener, Protocol)],
    cx: &mut Context<'_>,
) -> Poll<(std::io::Result<(TcpStream, SocketAddr)>, Protocol)> {
    for (socket, protocol) in sockets {
        if let Poll::Ready(accepted) = socket.poll_accept(cx) {
            return Poll::Ready((accepted, protocol.clone()));
        }
    }
    Poll::Pending
}

/// Stops accepting for `wait` (new connections queue in the listen
/// backlog), counted; breaks when `shutdown` resolves meanwhile.
async fn pause_accepting(
    broker: &Broker,
    wait: Duration,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> std::ops::ControlFlow<()> {
    broker.stats().accept_pauses.inc();
    broker
        .stats()
        .accept_paused_seconds
        .inc_by(wait.as_secs_f64());
    tracing::debug!(?wait, "max-connection-rate reached: not accepting");
    tokio::select! {
        _ = shutdown.as_mut() => std::ops::ControlFlow::Break(()),
        _ = tokio::time::sleep(wait) => std::ops::ControlFlow::Continue(()),
    }
}

/// Accepts connections until `shutdown` resolves, then ends every session
/// and waits (at most `drain_timeout`) for them to save their state.
pub async fn serve(
    broker: Arc<Broker>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
    drain_timeout: Duration,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let limit = Arc::new(Semaphore::new(broker.limits().max_connections));
    let admission = Admission::new(
        broker.limits().max_connections_per_ip,
        broker.limits().max_connection_rate,
        broker.limits().trusted_proxies.clone(),
    );
    tokio::pin!(shutdown);
    loop {
        if let Err(wait) = admission.next_accept(Instant::now().into_std()) {
            if pause_accepting(&broker, wait, &mut shutdown)
                .await
                .is_break()
            {
                break;
            }
            continue;
        }
        let (accepted, protocol) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = std::future::poll_fn(|cx| poll_accept(&listeners.sockets, cx)) => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // Out of file descriptors or similar: back off, keep serving.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ip_slot = match admission.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                refuse(&broker, why);
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection refused: max-connections reached");
            broker.stats().refused(Refusal::MaxConnections);
            continue;
        };
        broker.stats().connections_total.inc();
        let _ = stream.set_nodelay(true);
        let broker = broker.clone();
        let stop_rx = stop_rx.clone();
        let done_tx = done_tx.clone();
        tokio::spawn(async move {
            let transport = open(&broker, protocol, stream, peer).await;
            if let Some(transport) = transport {
                session::serve(broker, transport, peer, stop_rx, done_tx).await;
            }
            drop(permit);
            drop(ip_slot);
        });
    }
    drop(listeners);
    tracing::info!("shutting down: closing client connections");
    let _ = stop_tx.send(true);
    drop(done_tx);
    if tokio::time::timeout(drain_timeout, done_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!("some sessions did not finish within the shutdown timeout");
    }
}

/// The transport for an accepted socket: TCP as it is, otherwise after
/// the TLS and/or WebSocket handshakes, all within one connect timeout. A
/// failure is counted and closes the connection (dropping the socket).
async fn open(
    broker: &Broker,
    protocol: Protocol,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<Transport> {
    let deadline = Instant::now() + broker.limits().connect_timeout;
    match protocol {
        Protocol::Mqtt => Some(Transport::Tcp(stream)),
        Protocol::MqttTls(tls) => tls_handshake(broker, &tls, stream, peer, deadline)
            .await
            .map(|tls| Transport::Tls(Box::new(tls))),
        Protocol::Ws => ws_handshake(broker, stream, peer, deadline)
            .await
            .map(|ws| Transport::Ws(Box::new(ws))),
        Protocol::Wss(tls) => {
            let tls = tls_handshake(broker, &tls, stream, peer, deadline).await?;
            ws_handshake(broker, tls, peer, deadline)
                .await
                .map(|ws| Transport::Wss(Box::new(ws)))
        }
    }
}

/// Runs the TLS handshake until `deadline`; a failure is counted.
async fn tls_handshake(
    broker: &Broker,
    tls: &ServerTls,
    stream: TcpStream,
    peer: SocketAddr,
    deadline: Instant,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tls
        .accept(stream, deadline.saturating_duration_since(Instant::now()))
        .await
    {
        Ok(stream) => Some(stream),
        Err(error) => {
            tracing::debug!(%peer, %error, "connection closed: TLS handshake failed");
            broker.stats().refused(Refusal::TlsHandshake);
            None
        }
    }
}

/// Runs the WebSocket upgrade until `deadline`, with messages bounded by
/// the packet size limit; a failure is counted.
async fn ws_handshake<S>(
    broker: &Broker,
    stream: S,
    peer: SocketAddr,
    deadline: Instant,
) -> Option<ws::WsStream<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let limits = WsLimits::for_max_packet_size(broker.limits().max_packet_size);
    match ws::accept(
        stream,
        limits,
        deadline.saturating_duration_since(Instant::now()),
    )
    .await
    {
        Ok(stream) => Some(stream),
        Err(error) => {
            tracing::debug!(%peer, %error, "connection closed: WebSocket handshake failed");
            broker.stats().refused(Refusal::WsHandshake);
            None
        }
    }
}

/// Counts a connection closed at accept by an admission limit (dropping
/// the stream closes it; nothing was read).
fn refuse(broker: &Broker, why: NotAdmitted) {
    let (refusal, limit) = match why {
        NotAdmitted::PerIp => (Refusal::PerIp, LimitReason::ConnectionsPerIp),
    };
    tracing::debug!(?why, "connection closed at accept: admission limit");
    broker.stats().refused(refusal);
    broker.stats().limit_refused(limit);
}
