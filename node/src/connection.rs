//! One client's byte stream (TCP, or TLS over TCP: [`Transport`]), as
//! decoded MQTT packets in and coalesced bytes out.
//!
//! Reads go straight into a buffer that exists only while bytes are
//! pending: a packet is framed there ([`frame`]), decoded from there (its
//! payload stays a slice of that buffer) and, once every buffered packet
//! is handed out, the buffer is released,
//! so an idle connection holds no read or write buffer at all. Writes are
//! appended to one output buffer by everything a session does in a turn and
//! leave in a single write.
//!
//! A session does not wait for its writes: [`Connection::write_now`] sends
//! what the socket takes at once, and [`Connection::next_input`] sends the
//! rest while it waits for the next frame, so a client that does not read
//! still has its PUBACK, PINGREQ and DISCONNECT read — up to
//! [`MAX_UNWRITTEN_WHILE_READING`] bytes of unsent output; beyond that the
//! connection stops reading until the client takes bytes again, so the
//! answers to what it sends cannot grow without bound.

use std::future::Future;
use std::io;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::protocol::codec::ConnectPacket;
use crate::protocol::frame::{self, parse_header};
use crate::protocol::proxy_header;
use crate::protocol::{decode, decode_first, FrameHeader, Inbound, ProtocolError, Version};
use crate::transport::Transport;

/// How much to read at a time.
const READ_CHUNK: usize = 4096;

/// Most buffer space reserved ahead of bytes that have not arrived: a
/// header declaring a 1 MiB packet costs no more than this until the bytes
/// come (then the buffer grows as they do).
const MAX_RESERVE_AHEAD: usize = 16 * 1024;

/// Unsent output up to which [`Connection::next_input`] keeps reading.
pub const MAX_UNWRITTEN_WHILE_READING: usize = 1024 * 1024;

/// What [`Connection::next_input`] saw.
#[derive(Debug)]
pub enum Input {
    /// A packet, or `None` for a clean close between packets.
    Packet(Option<Inbound>),
    /// Every byte of output has left (asked for with `report_drained`).
    Drained,
}

/// What woke a connection waiting to read and write.
enum Wake {
    /// Bytes were read (or the read failed, or the stream ended).
    Read(io::Result<usize>),
    /// Bytes were written (or the transport's own buffer flushed).
    Written(io::Result<usize>),
    WriteTimedOut,
}

/// Why a connection cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The client broke the framing rules.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The client closed the connection in the middle of a packet.
    #[error("connection closed mid-packet")]
    Truncated,
    /// A trusted proxy's connection did not start with a valid header.
    #[error(transparent)]
    ProxyHeader(proxy_header::ProxyHeaderError),
    /// A write did not complete in time: the client does not read.
    #[error("write timed out")]
    WriteTimeout,
}

/// A client's socket with MQTT framing.
#[derive(Debug)]
pub struct Connection {
    stream: Transport,
    read_buf: BytesMut,
    write_buf: BytesMut,
    max_packet_size: usize,
    /// How packets after the CONNECT are decoded: set by
    /// [`Connection::read_connect`] from the CONNECT's protocol level.
    version: Version,
    /// Since when unsent output has waited without the client taking a
    /// byte of it; `None` while nothing waits.
    write_stalled_since: Option<tokio::time::Instant>,
}

impl Connection {
    /// Wraps an accepted connection (for TLS, after its handshake).
    pub fn new(stream: Transport, max_packet_size: usize) -> Connection {
        Connection {
            stream,
            read_buf: BytesMut::new(),
            write_buf: BytesMut::new(),
            max_packet_size,
            version: Version::Mqtt311,
            write_stalled_since: None,
        }
    }

    /// The protocol version of the connection's CONNECT (3.1.1 before it).
    pub fn version(&self) -> Version {
        self.version
    }

    /// The transport underneath (TCP or TLS), for what it says about the
    /// client: whether it came over TLS, its certificate's name.
    pub fn transport(&self) -> &Transport {
        &self.stream
    }

    /// The header of the next packet if all of it is buffered.
    fn buffered_header(&mut self) -> Result<Option<FrameHeader>, ProtocolError> {
        let Some(header) = parse_header(&self.read_buf, self.max_packet_size)? else {
            return Ok(None);
        };
        if self.read_buf.len() < header.packet_len() {
            let missing = header.packet_len() - self.read_buf.len();
            self.read_buf.reserve(missing.min(MAX_RESERVE_AHEAD));
            return Ok(None);
        }
        Ok(Some(header))
    }

    /// After a packet was decoded out of the read buffer.
    fn packet_taken(&mut self) {
        if self.read_buf.is_empty() {
            // Release the allocation: the packets handed out keep what they
            // need.
            self.read_buf = BytesMut::new();
        }
    }

    /// The next packet already buffered, decoded, without waiting.
    pub fn buffered_packet(&mut self) -> Result<Option<Inbound>, ProtocolError> {
        let Some(header) = self.buffered_header()? else {
            return Ok(None);
        };
        let packet = decode(self.version, &header, &mut self.read_buf);
        self.packet_taken();
        packet.map(Some)
    }

    /// Waits for the next packet. `Ok(None)` is a clean close between
    /// packets. Cancel-safe: nothing read is lost if the future is dropped.
    pub async fn read_packet(&mut self) -> Result<Option<Inbound>, ConnectionError> {
        loop {
            if let Some(packet) = self.buffered_packet()? {
                return Ok(Some(packet));
            }
            if self.read_more().await? {
                return Ok(None);
            }
        }
    }

    /// Waits for a connection's first packet, which must be a CONNECT:
    /// refuses the bytes as soon as the first one cannot start one, without
    /// waiting for the length it declares. Packets after it are decoded
    /// with the CONNECT's protocol version.
    pub async fn read_connect(&mut self) -> Result<Option<Box<ConnectPacket>>, ConnectionError> {
        loop {
            frame::check_connect_start(&self.read_buf).map_err(ProtocolError::from)?;
            if let Some(header) = self.buffered_header()? {
                let connect = decode_first(&header, &mut self.read_buf);
                self.packet_taken();
                let connect = connect?;
                self.version = connect.version;
                return Ok(Some(connect));
            }
            if self.read_more().await? {
                return Ok(None);
            }
        }
    }

    /// Reads what the socket has; true on a clean close between packets.
    async fn read_more(&mut self) -> Result<bool, ConnectionError> {
        let read = std::future::poll_fn(|cx| {
            self.stream
                .poll_read_into(cx, &mut self.read_buf, reserve_read)
        })
        .await;
        self.read_done(read)
    }

    /// What a read means; true on a clean close between packets.
    fn read_done(&self, read: io::Result<usize>) -> Result<bool, ConnectionError> {
        match read {
            Ok(0) if self.read_buf.is_empty() => Ok(true),
            Ok(0) => Err(ConnectionError::Truncated),
            Ok(_) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether output waits: encoded bytes not yet written, or (TLS)
    /// records the socket has not taken yet.
    fn has_unsent(&self) -> bool {
        !self.write_buf.is_empty() || self.stream.wants_write()
    }

    /// Bytes encoded and not yet sent.
    pub fn unwritten(&self) -> usize {
        self.write_buf.len()
    }

    /// Sends what the socket takes now, without waiting; the rest is sent
    /// by [`Self::next_input`].
    pub fn write_now(&mut self) -> Result<(), ConnectionError> {
        while !self.write_buf.is_empty() {
            match self.stream.try_write(&self.write_buf) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
                Ok(n) => {
                    let _ = self.write_buf.split_to(n);
                    self.write_stalled_since = None;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
        if self.write_buf.is_empty() {
            // Release the allocation; an idle connection keeps no buffer.
            self.write_buf = BytesMut::new();
        }
        if !self.has_unsent() {
            self.write_stalled_since = None;
        } else if self.write_stalled_since.is_none() {
            self.write_stalled_since = Some(tokio::time::Instant::now());
        }
        Ok(())
    }

    /// Waits for the next frame while sending unsent output. Returns
    /// [`Input::Drained`] once the output is empty if `report_drained`
    /// (the session has more to encode), and
    /// [`ConnectionError::WriteTimeout`] when the client has taken no byte
    /// for `write_timeout`. Cancel-safe: what was read or written stays so.
    pub async fn next_input(
        &mut self,
        write_timeout: Duration,
        report_drained: bool,
    ) -> Result<Input, ConnectionError> {
        loop {
            if !self.has_unsent() {
                if report_drained {
                    return Ok(Input::Drained);
                }
                return self.read_packet().await.map(Input::Packet);
            }
            let reading = self.write_buf.len() <= MAX_UNWRITTEN_WHILE_READING;
            if reading {
                if let Some(packet) = self.buffered_packet()? {
                    return Ok(Input::Packet(Some(packet)));
                }
            }
            let stalled = self
                .write_stalled_since
                .unwrap_or_else(tokio::time::Instant::now);
            let mut timer = std::pin::pin!(tokio::time::sleep_until(stalled + write_timeout));
            let wake = std::future::poll_fn(|cx| {
                if reading {
                    let read = self
                        .stream
                        .poll_read_into(cx, &mut self.read_buf, reserve_read);
                    if let Poll::Ready(read) = read {
                        return Poll::Ready(Wake::Read(read));
                    }
                }
                let written = if self.write_buf.is_empty() {
                    // Only the transport's own buffer (TLS records) waits.
                    std::pin::Pin::new(&mut self.stream)
                        .poll_flush(cx)
                        .map_ok(|()| 0)
                } else {
                    std::pin::Pin::new(&mut self.stream).poll_write(cx, &self.write_buf)
                };
                if let Poll::Ready(written) = written {
                    return Poll::Ready(Wake::Written(written));
                }
                timer.as_mut().poll(cx).map(|()| Wake::WriteTimedOut)
            })
            .await;
            match wake {
                Wake::Read(read) => {
                    if self.read_done(read)? {
                        return Ok(Input::Packet(None));
                    }
                }
                Wake::Written(written) => {
                    let written = written?;
                    if written == 0 && !self.write_buf.is_empty() {
                        return Err(io::Error::from(io::ErrorKind::WriteZero).into());
                    }
                    let _ = self.write_buf.split_to(written);
                    self.write_stalled_since = None;
                    self.write_now()?;
                }
                Wake::WriteTimedOut => return Err(ConnectionError::WriteTimeout),
            }
        }
    }

    /// Reads the PROXY protocol v2 header a trusted load balancer sends
    /// first; returns the client address it carries.
    pub async fn read_proxy_header(
        &mut self,
    ) -> Result<Option<std::net::SocketAddr>, ConnectionError> {
        loop {
            if let Some(header) =
                proxy_header::parse(&self.read_buf).map_err(ConnectionError::ProxyHeader)?
            {
                let _ = self.read_buf.split_to(header.len);
                return Ok(header.source);
            }
            let read = std::future::poll_fn(|cx| {
                self.stream
                    .poll_read_into(cx, &mut self.read_buf, |buf| buf.reserve(READ_CHUNK / 4))
            })
            .await;
            if read? == 0 {
                return Err(ConnectionError::Truncated);
            }
        }
    }

    /// Where packets to send are encoded; sent by [`Self::flush`].
    pub fn output(&mut self) -> &mut BytesMut {
        &mut self.write_buf
    }

    /// Sends everything encoded since the last flush in one write.
    pub async fn flush(&mut self, timeout: Duration) -> Result<(), ConnectionError> {
        if !self.has_unsent() {
            return Ok(());
        }
        // Most writes fit the socket buffer at once: try without arming a
        // timer, and time only the rest (a client that is not reading).
        let written = match self.stream.try_write(&self.write_buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e.into()),
        };
        if written < self.write_buf.len() || self.stream.wants_write() {
            let rest = &self.write_buf[written..];
            let stream = &mut self.stream;
            let send = async move {
                stream.write_all(rest).await?;
                stream.flush().await
            };
            match tokio::time::timeout(timeout, send).await {
                Ok(result) => result?,
                Err(_) => return Err(ConnectionError::WriteTimeout),
            }
        }
        // Release the allocation; an idle connection keeps no buffer.
        self.write_buf = BytesMut::new();
        self.write_stalled_since = None;
        Ok(())
    }

    /// Sends what is pending (best effort) and closes the socket.
    pub async fn close(mut self, timeout: Duration) {
        let _ = self.flush(timeout).await;
        let _ = tokio::time::timeout(timeout, self.stream.shutdown()).await;
    }
}

/// Makes room to read into, keeping a partly filled buffer's capacity.
fn reserve_read(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}
