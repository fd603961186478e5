//! The byte stream under a [`crate::connection::Connection`]: plain TCP,
//! TLS over TCP once the handshake is done, or WebSocket (over TCP or
//! TLS) once the upgrade is done.
//!
//! An enum rather than a generic or a box: the session code is the same
//! for every transport and is compiled once, and the TCP arm keeps the
//! readiness-based reads and writes straight on the socket (no extra copy,
//! no virtual call). The other arms go through their stream's
//! `AsyncRead`/`AsyncWrite`: rustls decrypts into and encrypts from its own
//! buffers, and [`WsStream`] unwraps binary messages and frames writes as
//! messages, so after a write some bytes may still wait there
//! ([`Transport::wants_write`]) until the socket takes them.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use astramq_shared::ws::WsStream;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// A client's connection.
#[derive(Debug)]
pub enum Transport {
    /// MQTT straight over TCP.
    Tcp(TcpStream),
    /// MQTT inside TLS (boxed: rustls' state is large, and rare).
    Tls(Box<TlsStream<TcpStream>>),
    /// MQTT in WebSocket binary messages over TCP (`--ws-listen`).
    Ws(Box<WsStream<TcpStream>>),
    /// MQTT in WebSocket binary messages inside TLS (`--wss-listen`).
    Wss(Box<WsStream<TlsStream<TcpStream>>>),
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
            // rustls may hold decrypted bytes, and tungstenite a decoded
            // message, that the socket no longer signals: read through them
            // rather than wait on the socket.
            Transport::Tls(tls) => poll_read_through(&mut **tls, cx, buf, reserve),
            Transport::Ws(ws) => poll_read_through(&mut **ws, cx, buf, reserve),
            Transport::Wss(ws) => poll_read_through(&mut **ws, cx, buf, reserve),
        }
    }

    /// Writes what the connection takes now, without waiting.
    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Tcp(tcp) => tcp.try_write(buf),
            Transport::Tls(tls) => try_write_through(&mut **tls, buf),
            Transport::Ws(ws) => try_write_through(&mut **ws, buf),
            Transport::Wss(ws) => try_write_through(&mut **ws, buf),
        }
    }

    /// Whether this is MQTT straight over TCP (the only transport a
    /// PROXY protocol header can precede).
    pub fn is_plain_tcp(&self) -> bool {
        matches!(self, Transport::Tcp(_))
    }

    /// The client certificate's identity, on a TLS listener that requires
    /// client certificates (`--tls-client-ca`; rustls verified the
    /// certificate against that CA during the handshake): `Some(cn)` with
    /// its subject CN, `Some(None)` for a certificate without one, `None`
    /// when no certificate was presented (TCP, or TLS without client CA).
    pub fn certificate_name(&self) -> Option<Option<String>> {
        match self {
            Transport::Tcp(_) | Transport::Ws(_) => None,
            Transport::Tls(tls) => certificate_name(tls),
            Transport::Wss(ws) => certificate_name(ws.get_ref()),
        }
    }

    /// Whether bytes already written still wait inside the transport
    /// (encrypted records, WebSocket frames the socket has not taken);
    /// never for TCP.
    pub fn wants_write(&self) -> bool {
        match self {
            Transport::Tcp(_) => false,
            Transport::Tls(tls) => tls.get_ref().1.wants_write(),
            Transport::Ws(ws) => ws.wants_write(),
            Transport::Wss(ws) => ws.wants_write() || ws.get_ref().get_ref().1.wants_write(),
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
            Transport::Ws(ws) => Pin::new(&mut **ws).poll_write(cx, buf),
            Transport::Wss(ws) => Pin::new(&mut **ws).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(tcp) => Pin::new(tcp).poll_flush(cx),
            Transport::Tls(tls) => Pin::new(&mut **tls).poll_flush(cx),
            Transport::Ws(ws) => Pin::new(&mut **ws).poll_flush(cx),
            Transport::Wss(ws) => Pin::new(&mut **ws).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Transport::Tls(tls) => Pin::new(&mut **tls).poll_shutdown(cx),
            Transport::Ws(ws) => Pin::new(&mut **ws).poll_shutdown(cx),
            Transport::Wss(ws) => Pin::new(&mut **ws).poll_shutdown(cx),
        }
    }
}

/// Reads through a stream that buffers on its own (TLS, WebSocket) after
/// `reserve` made room; releases the buffer while nothing arrives.
fn poll_read_through<R: AsyncRead + Unpin>(
    stream: &mut R,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    reserve: fn(&mut BytesMut),
) -> Poll<io::Result<usize>> {
    reserve(buf);
    let read = std::pin::pin!(stream.read_buf(buf)).poll(cx);
    match read {
        Poll::Pending => {
            if buf.is_empty() {
                *buf = BytesMut::new();
            }
            Poll::Pending
        }
        // A client that closes without close_notify has still closed: the
        // same clean end as a TCP FIN.
        Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Poll::Ready(Ok(0)),
        ready => ready,
    }
}

/// Writes what `stream` takes now and pushes out what it made of it, as
/// far as the socket takes it, without waiting.
fn try_write_through<W: AsyncWrite + Unpin>(stream: &mut W, buf: &[u8]) -> io::Result<usize> {
    let mut cx = Context::from_waker(Waker::noop());
    let written = match Pin::new(&mut *stream).poll_write(&mut cx, buf) {
        Poll::Ready(result) => result?,
        Poll::Pending => return Err(io::ErrorKind::WouldBlock.into()),
    };
    if let Poll::Ready(Err(e)) = Pin::new(&mut *stream).poll_flush(&mut cx) {
        return Err(e);
    }
    Ok(written)
}

/// The verified client certificate's CN on a TLS stream, as
/// [`Transport::certificate_name`] reports it.
fn certificate_name(tls: &TlsStream<TcpStream>) -> Option<Option<String>> {
    tls.get_ref().1.peer_certificates()?;
    Some(astramq_shared::tls::client_common_name(tls))
}
