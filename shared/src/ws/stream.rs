//! [`WsStream`]: a WebSocket connection as the byte stream it carries.
//!
//! Reads hand out the payload of binary messages in order, whatever their
//! boundaries; writes send each chunk written as one binary message (at
//! most [`MAX_OUT_MESSAGE`] bytes: a larger write is taken in part, as a
//! socket would). What is not a binary message is handled here:
//!
//! | from the client             | what happens                              |
//! |-----------------------------|-------------------------------------------|
//! | ping                        | pong (queued by tungstenite, sent with the next read, write or flush) |
//! | pong, empty binary message  | ignored                                   |
//! | close                       | answered with close; reads end-of-stream  |
//! | text message                | close 1003, then the read fails           |
//! | message over the size limit | close 1009, then the read fails           |
//! | broken framing              | close 1002, then the read fails           |
//! | TCP end without a close     | reads end-of-stream, as on TCP            |

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::sink::Sink;
use futures_util::stream::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::WebSocketStream;

/// Most bytes sent in one outgoing message: bounds the copy a write makes
/// and what tungstenite holds while the socket is full.
pub const MAX_OUT_MESSAGE: usize = 64 * 1024;

/// A WebSocket connection read and written as a byte stream.
#[derive(Debug)]
pub struct WsStream<S> {
    /// The WebSocket protocol over the underlying stream.
    inner: WebSocketStream<S>,
    /// The rest of the binary message being read.
    reading: Bytes,
    /// The client closed (or the stream ended): reads return end-of-stream.
    read_closed: bool,
    /// A close to send before the read fails with the error beside it.
    failing: Option<Failing>,
    /// Messages were written and not flushed since.
    unflushed: bool,
}

/// A connection being failed: the close frame to send, then the error.
#[derive(Debug)]
struct Failing {
    /// `None` once handed to tungstenite.
    close: Option<CloseFrame>,
    /// What the read returns once the close is out (or could not go).
    error: Option<io::Error>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// Wraps a WebSocket connection whose handshake is done.
    pub fn new(inner: WebSocketStream<S>) -> WsStream<S> {
        WsStream {
            inner,
            reading: Bytes::new(),
            read_closed: false,
            failing: None,
            unflushed: false,
        }
    }

    /// The underlying stream (a TLS stream, for its client certificate).
    pub fn get_ref(&self) -> &S {
        self.inner.get_ref()
    }

    /// Whether written bytes may still wait in tungstenite or below it
    /// (TLS records): true from a write until a flush completes.
    pub fn wants_write(&self) -> bool {
        self.unflushed
    }

    /// Starts failing the connection with `code`; the read will return
    /// an `InvalidData` error saying `why`.
    fn fail(&mut self, code: CloseCode, why: String) {
        self.failing = Some(Failing {
            close: Some(CloseFrame {
                code,
                reason: "".into(),
            }),
            error: Some(io::Error::new(io::ErrorKind::InvalidData, why)),
        });
    }

    /// Sends the pending close frame, then yields the failure's error. A
    /// close that cannot be sent is given up: the error is what matters.
    fn poll_failing(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let Some(failing) = self.failing.as_mut() else {
            return Poll::Ready(io::Error::other("no failure pending"));
        };
        let sent = (|| {
            if let Some(close) = failing.close.take() {
                match Pin::new(&mut self.inner).poll_ready(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => return Poll::Ready(()),
                    Poll::Pending => {
                        failing.close = Some(close);
                        return Poll::Pending;
                    }
                }
                if Pin::new(&mut self.inner)
                    .start_send(Message::Close(Some(close)))
                    .is_err()
                {
                    return Poll::Ready(());
                }
            }
            Pin::new(&mut self.inner).poll_flush(cx).map(|_| ())
        })();
        ready!(sent);
        let error = failing
            .error
            .take()
            .unwrap_or_else(|| io::Error::other("WebSocket connection failed"));
        Poll::Ready(error)
    }

    /// Handles one message (or error) read from the client.
    fn receive(&mut self, next: Option<Result<Message, Error>>) -> Result<(), io::Error> {
        match next {
            None => self.read_closed = true,
            Some(Ok(Message::Binary(payload))) => self.reading = payload,
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            // tungstenite has queued the answering close.
            Some(Ok(Message::Close(_))) => self.read_closed = true,
            Some(Ok(Message::Text(_))) => self.fail(
                CloseCode::Unsupported,
                "WebSocket text message: MQTT is carried in binary messages".to_owned(),
            ),
            Some(Err(error)) => self.receive_error(error)?,
        }
        Ok(())
    }

    /// Handles a read error: a TCP end is end-of-stream, a client's
    /// violation fails the connection with a close, an I/O error is
    /// returned as it is.
    fn receive_error(&mut self, error: Error) -> Result<(), io::Error> {
        match error {
            Error::ConnectionClosed
            | Error::AlreadyClosed
            | Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                self.read_closed = true;
            }
            Error::Capacity(error) => self.fail(CloseCode::Size, error.to_string()),
            Error::Protocol(error) => self.fail(CloseCode::Protocol, error.to_string()),
            Error::Utf8(error) => self.fail(CloseCode::Invalid, error),
            Error::Io(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
                self.read_closed = true;
            }
            other => return Err(into_io(other)),
        }
        Ok(())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.failing.is_some() {
                return this.poll_failing(cx).map(Err);
            }
            if !this.reading.is_empty() {
                let n = buf.remaining().min(this.reading.len());
                buf.put_slice(&this.reading[..n]);
                this.reading.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.read_closed || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let next = ready!(Pin::new(&mut this.inner).poll_next(cx));
            this.receive(next)?;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(Pin::new(&mut this.inner).poll_ready(cx)).map_err(into_io)?;
        let n = buf.len().min(MAX_OUT_MESSAGE);
        Pin::new(&mut this.inner)
            .start_send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
            .map_err(into_io)?;
        this.unflushed = true;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.inner).poll_flush(cx)).map_err(into_io)?;
        this.unflushed = false;
        Poll::Ready(Ok(()))
    }

    /// Sends a close frame (unless one was already exchanged) and flushes;
    /// the client's answer is read, if at all, by the reader.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let closed = ready!(Pin::new(&mut this.inner).poll_close(cx));
        this.unflushed = false;
        match closed {
            Ok(()) | Err(Error::ConnectionClosed | Error::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(error) => Poll::Ready(Err(into_io(error))),
        }
    }
}

/// A tungstenite error as an I/O error (the byte stream's error type).
fn into_io(error: Error) -> io::Error {
    match error {
        Error::Io(error) => error,
        Error::ConnectionClosed | Error::AlreadyClosed => io::ErrorKind::BrokenPipe.into(),
        other => io::Error::other(other),
    }
}
