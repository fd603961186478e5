//! The byte stream under a [`crate::connection::Connection`]: plain TCP,
//! or TLS over TCP once the handshake is done.
//!
//! An enum rather than a generic or a box: the session code is the same
//! for both and is compiled once, and the TCP arm keeps the readiness-based
//! reads and writes straight on the socket (no extra copy, no virtual
//! call). The TLS arm goes through rustls, which decrypts into and encrypts
//! from its own buffers, so after a write some ciphertext may still wait
//! in rustls ([`Transport::wants_write`]) until the socket takes it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// A client's connection.
#[derive(Debug)]
pub enum Transport {
    /// MQTT straight over TCP.
    Tcp(TcpStream),
    /// MQTT inside TLS (boxed: rustls' state is large, and rare).
    Tls(Box<TlsStream<TcpStream>>),
}

impl Transport {
    /// Waits until bytes can be read, then reads what is there into `buf`
    /// after `reserve` made room (not before: a connection waiting for
    /// bytes holds no buffer). `Ok(0)` is end of stream. Cancel-safe.
    pub fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        reserve: fn(&mut BytesMut),
    ) -> Poll<io::Result<usize>> {
        match self {
            Transport::Tcp(tcp) => loop {
                ready!(tcp.poll_read_ready(cx))?;
                reserve(buf);
                match tcp.try_read_buf(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // Readiness was stale: don't hold a buffer while waiting.
                        if buf.is_empty() {
                            *buf = BytesMut::new();
                        }
                    }
                    result => return Poll::Ready(result),
                }
            },
            Transport::Tls(tls) => {
                // rustls may hold decrypted bytes the socket no longer
                // signals, so read through it rather than wait on the socket.
                reserve(buf);
                let read = std::pin::pin!(tls.read_buf(buf)).poll(cx);
                match read {
                    Poll::Pending => {
                        if buf.is_empty() {
                            *buf = BytesMut::new();
                        }
                        Poll::Pending
                    }
                    // A client that closes without close_notify has still
                    // closed: the same clean end as a TCP FIN.
                    Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        Poll::Ready(Ok(0))
                    }
                    ready => ready,
                }
            }
        }
    }

    /// Writes what the connection takes now, without waiting.
    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Tcp(tcp) => tcp.try_write(buf),
            Transport::Tls(tls) => {
                let mut cx = Context::from_waker(Waker::noop());
                let written = match Pin::new(&mut **tls).poll_write(&mut cx, buf) {
                    Poll::Ready(result) => result?,
                    Poll::Pending => return Err(io::ErrorKind::WouldBlock.into()),
                };
                // Push out the records rustls made, as far as the socket takes them.
                if let Poll::Ready(Err(e)) = Pin::new(&mut **tls).poll_flush(&mut cx) {
                    return Err(e);
                }
                Ok(written)
            }
        }
    }

    /// Whether this is a TLS connection.
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// The client certificate's identity, on a TLS listener that requires
    /// client certificates (`--tls-client-ca`; rustls verified the
    /// certificate against that CA during the handshake): `Some(cn)` with
    /// its subject CN, `Some(None)` for a certificate without one, `None`
    /// when no certificate was presented (TCP, or TLS without client CA).
    pub fn certificate_name(&self) -> Option<Option<String>> {
        match self {
            Transport::Tcp(_) => None,
            Transport::Tls(tls) => {
                tls.get_ref().1.peer_certificates()?;
                Some(astramq_shared::tls::client_common_name(tls))
            }
        }
    }

    /// Whether bytes already written still wait inside the transport
    /// (encrypted records the socket has not taken); never for TCP.
    pub fn wants_write(&self) -> bool {
        match self {
            Transport::Tcp(_) => false,
            Transport::Tls(tls) => tls.get_ref().1.wants_write(),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Transport::Tls(tls) => Pin::new(&mut **tls).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(tcp) => Pin::new(tcp).poll_flush(cx),
            Transport::Tls(tls) => Pin::new(&mut **tls).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Transport::Tls(tls) => Pin::new(&mut **tls).poll_shutdown(cx),
        }
    }
}
