//! Copying bytes both ways between a client and its node.
//!
//! One future drives both directions (no task or lock per direction), in
//! the style of `tokio::io::copy_bidirectional`, with what a proxy needs on
//! top:
//!
//! - **Backpressure**: each direction has one buffer and reads again only
//!   when everything read has been written, so a slow reader slows its
//!   writer down instead of growing memory.
//! - **Byte counting** as it goes (not at the end), for
//!   `astramq_proxy_bytes_total` on long-lived MQTT connections.
//! - **Half-close**: end-of-stream on one side becomes a `shutdown(Write)`
//!   (FIN) on the other; the other direction keeps flowing. A peer that never
//!   closes its side is cut after [`HALF_CLOSE_LINGER`].
//! - **Errors say which side failed**, so the caller can propagate a reset
//!   (see `app.rs`).
//! - Writes are flushed only when the next read would block: a burst of
//!   reads is written without a flush per read, a lone packet at once.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Buffer per direction. MQTT packets are mostly small; 16 KiB moves large
/// publishes in few syscalls and costs 32 KiB per proxied connection.
pub const BUFFER_SIZE: usize = 16 * 1024;

/// How long one direction may stay open after the other has ended.
pub const HALF_CLOSE_LINGER: Duration = Duration::from_secs(10);

/// One side of the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The MQTT client.
    Client,
    /// The broker node.
    Node,
}

/// How a relay ended.
#[derive(Debug)]
pub enum Ended {
    /// Both directions reached end-of-stream and were shut down.
    Closed,
    /// Reading from or writing to `side` failed (a reset, typically).
    Failed(Side, io::Error),
    /// One side closed and the other did not within [`HALF_CLOSE_LINGER`].
    HalfCloseTimeout,
}

/// One direction: read from one side into `buf`, write to the other.
struct Pipe {
    buf: Box<[u8]>,
    /// Bytes `pos..cap` of `buf` are read and not yet written.
    pos: usize,
    cap: usize,
    /// The reader reached end-of-stream.
    eof: bool,
    /// Something was written since the last flush.
    need_flush: bool,
    /// Finished: everything written and the writer shut down.
    done: bool,
    /// Counts the bytes written.
    meter: IntCounter,
}

impl Pipe {
    fn new(meter: IntCounter) -> Self {
        Pipe {
            buf: vec![0; BUFFER_SIZE].into_boxed_slice(),
            pos: 0,
            cap: 0,
            eof: false,
            need_flush: false,
            done: false,
            meter,
        }
    }

    /// Moves bytes until the reader would block, or the direction is done.
    /// Errors are tagged with the side they came from.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        (mut reader, from): (Pin<&mut R>, Side),
        (mut writer, to): (Pin<&mut W>, Side),
    ) -> Poll<Result<(), (Side, io::Error)>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.pos == self.cap && !self.eof {
                let mut read = ReadBuf::new(&mut self.buf);
                match reader.as_mut().poll_read(cx, &mut read) {
                    Poll::Ready(Ok(())) => {
                        let n = read.filled().len();
                        if n == 0 {
                            self.eof = true;
                        } else {
                            self.pos = 0;
                            self.cap = n;
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err((from, e))),
                    Poll::Pending => {
                        if self.need_flush {
                            ready!(writer.as_mut().poll_flush(cx)).map_err(|e| (to, e))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            while self.pos < self.cap {
                let n = ready!(writer
                    .as_mut()
                    .poll_write(cx, &self.buf[self.pos..self.cap]))
                .map_err(|e| (to, e))?;
                if n == 0 {
                    return Poll::Ready(Err((to, io::ErrorKind::WriteZero.into())));
                }
                self.pos += n;
                self.meter.inc_by(n as u64);
                self.need_flush = true;
            }
            if self.eof {
                ready!(writer.as_mut().poll_flush(cx)).map_err(|e| (to, e))?;
                ready!(writer.as_mut().poll_shutdown(cx)).map_err(|e| (to, e))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// Relays between `client` and `node` until both sides close or one fails.
pub struct Relay<'a, C: ?Sized, N: ?Sized> {
    client: &'a mut C,
    node: &'a mut N,
    /// Client to node.
    upstream: Pipe,
    /// Node to client.
    downstream: Pipe,
    /// Started when the first direction finishes.
    linger: Option<Pin<Box<Sleep>>>,
}

impl<'a, C, N> Relay<'a, C, N>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    N: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    /// A relay counting client→node bytes in `upstream` and node→client
    /// bytes in `downstream`.
    pub fn new(
        client: &'a mut C,
        node: &'a mut N,
        upstream: IntCounter,
        downstream: IntCounter,
    ) -> Self {
        Relay {
            client,
            node,
            upstream: Pipe::new(upstream),
            downstream: Pipe::new(downstream),
            linger: None,
        }
    }
}

impl<C, N> Future for Relay<'_, C, N>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    N: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    type Output = Ended;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Ended> {
        let this = self.get_mut();
        if !this.upstream.done {
            let polled = this.upstream.poll_copy(
                cx,
                (Pin::new(&mut *this.client), Side::Client),
                (Pin::new(&mut *this.node), Side::Node),
            );
            if let Poll::Ready(Err((side, e))) = polled {
                return Poll::Ready(Ended::Failed(side, e));
            }
        }
        if !this.downstream.done {
            let polled = this.downstream.poll_copy(
                cx,
                (Pin::new(&mut *this.node), Side::Node),
                (Pin::new(&mut *this.client), Side::Client),
            );
            if let Poll::Ready(Err((side, e))) = polled {
                return Poll::Ready(Ended::Failed(side, e));
            }
        }
        match (this.upstream.done, this.downstream.done) {
            (true, true) => Poll::Ready(Ended::Closed),
            (false, false) => Poll::Pending,
            _ => {
                let linger = this
                    .linger
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(HALF_CLOSE_LINGER)));
                match linger.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Ended::HalfCloseTimeout),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn counter() -> IntCounter {
        IntCounter::new("test_bytes", "test").unwrap()
    }

    #[tokio::test]
    async fn bytes_flow_both_ways_and_half_close_propagates() {
        let (mut client_app, mut client_proxy) = duplex(64);
        let (mut node_proxy, mut node_app) = duplex(64);
        let (up, down) = (counter(), counter());
        let relay = tokio::spawn({
            let (up, down) = (up.clone(), down.clone());
            async move { Relay::new(&mut client_proxy, &mut node_proxy, up, down).await }
        });
        // Far more than the duplex capacities: it only gets through if the
        // relay keeps moving as the node reads (backpressure, no deadlock).
        let payload = vec![7u8; 1000];
        let mut got = vec![0u8; 1000];
        let (sent, read) = tokio::join!(
            client_app.write_all(&payload),
            node_app.read_exact(&mut got)
        );
        sent.unwrap();
        read.unwrap();
        assert_eq!(got, payload);
        node_app.write_all(b"back").await.unwrap();
        let mut back = [0u8; 4];
        client_app.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");

        // The client half-closes: the node sees EOF, and can still answer.
        client_app.shutdown().await.unwrap();
        let mut rest = Vec::new();
        node_app.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        node_app.write_all(b"bye").await.unwrap();
        node_app.shutdown().await.unwrap();
        let mut tail = Vec::new();
        client_app.read_to_end(&mut tail).await.unwrap();
        assert_eq!(tail, b"bye");
        assert!(matches!(relay.await.unwrap(), Ended::Closed));
        assert_eq!((up.get(), down.get()), (1000, 7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_side_that_never_closes_is_cut_after_the_linger() {
        let (client_app, mut client_proxy) = duplex(64);
        let (mut node_proxy, _node_app) = duplex(64);
        drop(client_app); // EOF from the client; the node never closes
        let ended = Relay::new(&mut client_proxy, &mut node_proxy, counter(), counter()).await;
        assert!(matches!(ended, Ended::HalfCloseTimeout));
    }
}
