//! The accept loop and graceful shutdown.
//!
//! One loop accepts on the plain listener and, when configured, the TLS
//! one; both share the limits below, so a client counts the same against
//! them whichever port it uses. A TLS connection's handshake runs in its
//! own task, within `--connect-timeout` (a socket that never finishes it
//! is closed, so idle TLS sockets cannot pile up); a failed handshake —
//! plain MQTT sent to the TLS port, an untrusted client certificate — is
//! closed and counted as a `tls_handshake` refusal. After the handshake
//! the connection is served by the same session code as a TCP one.
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
use std::time::Duration;

use astramq_shared::tls::ServerTls;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

use crate::broker::Broker;
use crate::limits::{Admission, NotAdmitted};
use crate::session;
use crate::stats::{LimitReason, Refusal};
use crate::transport::Transport;

/// Connections the kernel queues for a listener before `accept` (capped by
/// `net.core.somaxconn`, 4096 by default on current Linux).
pub const BACKLOG: u32 = 4096;

/// Binds a client listener on `addr` with [`BACKLOG`] (and SO_REUSEADDR,
/// as the standard library sets it, so a restart finds its port free).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// The sockets clients connect to.
pub struct Listeners {
    /// MQTT over TCP (`--listen`).
    pub plain: TcpListener,
    /// MQTT over TLS (`--tls-listen`), with its certificates.
    pub tls: Option<(TcpListener, Arc<ServerTls>)>,
}

/// Accepts on the TLS listener, or never when there is none.
async fn accept_tls(
    tls: &Option<(TcpListener, Arc<ServerTls>)>,
) -> (std::io::Result<(TcpStream, SocketAddr)>, Arc<ServerTls>) {
    match tls {
        Some((listener, config)) => (listener.accept().await, config.clone()),
        None => std::future::pending().await,
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
        let (accepted, tls) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listeners.plain.accept() => (accepted, None),
            (accepted, tls) = accept_tls(&listeners.tls) => (accepted, Some(tls)),
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
            let transport = match tls {
                None => Some(Transport::Tcp(stream)),
                Some(tls) => tls_handshake(&broker, &tls, stream, peer).await,
            };
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

/// Runs the TLS handshake within the connect timeout; a failure is
/// counted and closes the connection (dropping the socket).
async fn tls_handshake(
    broker: &Broker,
    tls: &ServerTls,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<Transport> {
    match tls.accept(stream, broker.limits().connect_timeout).await {
        Ok(stream) => Some(Transport::Tls(Box::new(stream))),
        Err(error) => {
            tracing::debug!(%peer, %error, "connection closed: TLS handshake failed");
            broker.stats().refused(Refusal::TlsHandshake);
            None
        }
    }
}

/// Counts a connection closed at accept by an admission limit (dropping
/// the stream closes it; nothing was read).
fn refuse(broker: &Broker, why: NotAdmitted) {
    let (refusal, limit) = match why {
        NotAdmitted::PerIp => (Refusal::PerIp, LimitReason::ConnectionsPerIp),
        NotAdmitted::Rate => (Refusal::Rate, LimitReason::ConnectionRate),
    };
    tracing::debug!(?why, "connection closed at accept: admission limit");
    broker.stats().refused(refusal);
    broker.stats().limit_refused(limit);
}
