//! Copying bytes both ways between a client and its node.
//!
//! One future drives both directions (no task or lock per direction), in
//! the style of `tokio::io::copy_bidirectional`, with what a proxy needs on
//! top:
//!
//! - **No buffer while idle**: each read goes into a 16 KiB scratch
//!   buffer shared by the relays of one thread and is written on at once;
//!   only bytes the writer does not take right away are copied into a
//!   buffer of the direction's own, freed when they are written. An idle
//!   relayed connection therefore holds no relay buffer (it held 32 KiB).
//! - **Backpressure**: a direction reads again only when everything read
//!   has been written, so a slow reader slows its writer down instead of
//!   growing memory (at most one read, 16 KiB, is held per direction).
//! - **Byte counting** as it goes (not at the end), for
//!   `astramq_proxy_bytes_total` on long-lived MQTT connections.
//! - **Half-close**: end-of-stream on one side becomes a `shutdown(Write)`
//!   (FIN) on the other; the other direction keeps flowing. A peer that never
//!   closes its side is cut after [`HALF_CLOSE_LINGER`].
//! - **Errors say which side failed**, so the caller can propagate a reset
//!   (see `app.rs`).
//! - Writes are flushed only when the next read would block: a burst of
//!   reads is written without a flush per read, a lone packet at once.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// The most one read takes. MQTT packets are mostly small; 16 KiB moves
/// large publishes in few syscalls.
pub const BUFFER_SIZE: usize = 16 * 1024;

thread_local! {
    /// The scratch buffer reads go into, one per thread; `None` while a
    /// read on this thread is using it.
    static SCRATCH: Cell<Option<Box<[u8]>>> = const { Cell::new(None) };
}

/// Runs `f` with this thread's scratch buffer (or a fresh one if it is in
/// use further up the stack).
fn with_scratch<T>(f: impl FnOnce(&mut [u8]) -> T) -> T {
    let mut scratch = SCRATCH
        .take()
        .unwrap_or_else(|| vec![0; BUFFER_SIZE].into_boxed_slice());
    let result = f(&mut scratch);
    SCRATCH.set(Some(scratch));
    result
}

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

/// One direction: read from one side, write to the other.
struct Pipe {
    /// Bytes read that the writer has not taken yet (empty, unallocated,
    /// while the direction is idle); `pos..` is what is left of them.
    pending: Vec<u8>,
    pos: usize,
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
            pending: Vec::new(),
            pos: 0,
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
            ready!(self.poll_write_pending(cx, writer.as_mut())).map_err(|e| (to, e))?;
            if self.eof {
                ready!(writer.as_mut().poll_flush(cx)).map_err(|e| (to, e))?;
                ready!(writer.as_mut().poll_shutdown(cx)).map_err(|e| (to, e))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let read = with_scratch(|scratch| {
                let mut read = ReadBuf::new(scratch);
                match reader.as_mut().poll_read(cx, &mut read) {
                    Poll::Ready(Ok(())) if read.filled().is_empty() => {
                        self.eof = true;
                        Poll::Ready(Ok(()))
                    }
                    Poll::Ready(Ok(())) => {
                        self.write_through(cx, (writer.as_mut(), to), read.filled())
                    }
                    Poll::Ready(Err(e)) => Poll::Ready(Err((from, e))),
                    Poll::Pending => Poll::Pending,
                }
            });
            match read {
                Poll::Ready(result) => result?,
                Poll::Pending => {
                    if self.need_flush {
                        ready!(writer.as_mut().poll_flush(cx)).map_err(|e| (to, e))?;
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// Writes what was just read as far as the writer takes it now; keeps
    /// the rest in `pending`. Errors are the writer's (`to`'s).
    fn write_through<W>(
        &mut self,
        cx: &mut Context<'_>,
        (mut writer, to): (Pin<&mut W>, Side),
        mut bytes: &[u8],
    ) -> Poll<Result<(), (Side, io::Error)>>
    where
        W: AsyncWrite + ?Sized,
    {
        while !bytes.is_empty() {
            match writer.as_mut().poll_write(cx, bytes) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err((to, io::ErrorKind::WriteZero.into())))
                }
                Poll::Ready(Ok(n)) => {
                    self.meter.inc_by(n as u64);
                    self.need_flush = true;
                    bytes = &bytes[n..];
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err((to, e))),
                Poll::Pending => break,
            }
        }
        self.pending.extend_from_slice(bytes);
        self.pos = 0;
        Poll::Ready(Ok(()))
    }

    /// Writes out `pending`; frees it once it is all written.
    fn poll_write_pending<W>(
        &mut self,
        cx: &mut Context<'_>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        W: AsyncWrite + ?Sized,
    {
        while self.pos < self.pending.len() {
            let n = ready!(writer.as_mut().poll_write(cx, &self.pending[self.pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pos += n;
            self.meter.inc_by(n as u64);
            self.need_flush = true;
        }
        if !self.pending.is_empty() {
            self.pending = Vec::new();
            self.pos = 0;
        }
        Poll::Ready(Ok(()))
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

    #[tokio::test]
    async fn a_relay_keeps_no_buffer_once_its_bytes_are_written() {
        let (mut client_app, mut client_proxy) = duplex(64);
        let (mut node_proxy, mut node_app) = duplex(64);
        let mut relay = Relay::new(&mut client_proxy, &mut node_proxy, counter(), counter());
        // 1000 bytes through 64-byte pipes: most of each read waits in
        // `pending` for the node to take it.
        let payload = vec![7u8; 1000];
        let mut got = vec![0u8; 1000];
        let moved = async {
            let (sent, read) = tokio::join!(
                client_app.write_all(&payload),
                node_app.read_exact(&mut got)
            );
            sent.unwrap();
            read.unwrap();
        };
        tokio::select! {
            _ = &mut relay => panic!("the relay ended"),
            () = moved => {}
        }
        let _ = tokio::time::timeout(Duration::from_millis(20), &mut relay).await;
        assert_eq!(got, payload);
        assert_eq!(relay.upstream.pending.capacity(), 0);
        assert_eq!(relay.downstream.pending.capacity(), 0);
    }
}
