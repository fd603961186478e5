//! The MQTT listening socket, bound by us and handed to pingora.
//!
//! pingora binds its listeners itself and does not say which port it got,
//! so `--listen 127.0.0.1:0` (what tests and benchmarks use) would be
//! unusable. Instead `main` binds a std `TcpListener` before the server
//! starts (a taken port fails at once with a clear error), and this wrapper
//! puts its file descriptor into pingora's listen-fd table under the
//! endpoint's address just before the wrapped service starts. That is the
//! documented contract of `ServiceWithDependents::start_service` (the table
//! is how pingora hands sockets over during a graceful upgrade): pingora
//! finds the fd and uses it instead of binding.
//!
//! The wrapper also prints the readiness line,
//! `astramq-proxy listening on mqtt://ADDR` (`mqtts://`, `ws://`, `wss://`
//! for the TLS and WebSocket listeners), with the real bound address,
//! once the services it depends on (the control plane: metrics, gossip)
//! are ready and the signal handlers are installed.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::IntoRawFd;
use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::server::{ListenFds, ShutdownWatch};
use pingora_core::services::{Service, ServiceReadyNotifier, ServiceWithDependents};
use tokio::sync::watch;

use crate::control::Fatal;

/// A listening service whose socket was bound before the server started.
pub struct PreboundListener<S> {
    /// The pingora listening service; its endpoint address is `key`.
    inner: S,
    /// The bound socket, until it is handed to pingora.
    socket: Option<TcpListener>,
    /// The endpoint address string pingora looks the fd up by.
    key: String,
    /// The bound address, for the readiness line.
    bound: SocketAddr,
    /// The readiness line's scheme: `mqtt`, `mqtts`, `ws` or `wss`.
    scheme: &'static str,
    /// Set when start-up failed elsewhere: then no readiness line.
    fatal: Arc<Fatal>,
    /// Becomes true once the signal handlers are installed (see `main`).
    signals_ready: watch::Receiver<bool>,
}

impl<S> PreboundListener<S> {
    /// Wraps `inner`, whose single TCP endpoint must be `socket`'s local
    /// address written as a string (see [`endpoint_key`]).
    pub fn new(
        inner: S,
        scheme: &'static str,
        socket: TcpListener,
        fatal: Arc<Fatal>,
        signals_ready: watch::Receiver<bool>,
    ) -> std::io::Result<Self> {
        let bound = socket.local_addr()?;
        // pingora registers the fd with tokio, which requires non-blocking.
        socket.set_nonblocking(true)?;
        Ok(PreboundListener {
            inner,
            socket: Some(socket),
            key: endpoint_key(bound),
            bound,
            scheme,
            fatal,
            signals_ready,
        })
    }
}

/// The address string to give pingora for the endpoint of `bound`.
pub fn endpoint_key(bound: SocketAddr) -> String {
    bound.to_string()
}

#[async_trait]
impl<S: Service + 'static> ServiceWithDependents for PreboundListener<S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
        ready: ServiceReadyNotifier,
    ) {
        if self.fatal.is_tripped() {
            return; // the server is about to exit with an error
        }
        let (Some(socket), Some(table)) = (self.socket.take(), fds.as_ref()) else {
            tracing::error!("no listen-fd table from pingora: cannot hand over the MQTT socket");
            self.fatal.trip();
            return;
        };
        {
            let mut table = table.lock();
            if table.get(&self.key).is_none() {
                table.add(self.key.clone(), socket.into_raw_fd());
            }
        }
        // An error means the signal watcher is gone: nothing to wait for.
        let _ = self.signals_ready.wait_for(|installed| *installed).await;
        if self.fatal.is_tripped() {
            return;
        }
        println!(
            "astramq-proxy listening on {}://{}",
            self.scheme, self.bound
        );
        ready.notify_ready();
        Service::start_service(&mut self.inner, fds, shutdown, listeners_per_fd).await;
    }

    fn name(&self) -> &str {
        Service::name(&self.inner)
    }

    fn threads(&self) -> Option<usize> {
        Service::threads(&self.inner)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        Service::listen_addresses(&self.inner)
    }
}
