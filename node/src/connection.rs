//! One client's TCP stream, as whole MQTT frames in and coalesced bytes out.
//!
//! Reads go straight into a buffer that exists only while bytes are
//! pending: once every buffered frame is handed out the buffer is released,
//! so an idle connection holds no read or write buffer at all. Writes are
//! appended to one output buffer by everything a session does in a turn and
//! leave in a single `write_all`.

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::protocol::frame::{self, parse_header};
use crate::protocol::proxy_header;
use crate::protocol::{FrameError, FrameHeader, ProtocolError};

/// How much to read at a time.
const READ_CHUNK: usize = 4096;

/// Most buffer space reserved ahead of bytes that have not arrived: a
/// header declaring a 1 MiB packet costs no more than this until the bytes
/// come (then the buffer grows as they do).
const MAX_RESERVE_AHEAD: usize = 16 * 1024;

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
    stream: TcpStream,
    read_buf: BytesMut,
    write_buf: BytesMut,
    max_packet_size: usize,
}

impl Connection {
    /// Wraps an accepted socket.
    pub fn new(stream: TcpStream, max_packet_size: usize) -> Connection {
        Connection {
            stream,
            read_buf: BytesMut::new(),
            write_buf: BytesMut::new(),
            max_packet_size,
        }
    }

    /// The next complete frame already buffered, without waiting.
    pub fn buffered_frame(&mut self) -> Result<Option<(FrameHeader, Bytes)>, ProtocolError> {
        let Some(header) = parse_header(&self.read_buf, self.max_packet_size)? else {
            return Ok(None);
        };
        if self.read_buf.len() < header.packet_len() {
            let missing = header.packet_len() - self.read_buf.len();
            self.read_buf.reserve(missing.min(MAX_RESERVE_AHEAD));
            return Ok(None);
        }
        let frame = self.read_buf.split_to(header.packet_len()).freeze();
        if self.read_buf.is_empty() {
            // Release the allocation: the frames handed out keep what they need.
            self.read_buf = BytesMut::new();
        }
        Ok(Some((header, frame)))
    }

    /// Waits for the next frame. `Ok(None)` is a clean close between packets.
    /// Cancel-safe: nothing read is lost if the future is dropped.
    pub async fn read_frame(&mut self) -> Result<Option<(FrameHeader, Bytes)>, ConnectionError> {
        self.read_frame_checked(|_| Ok(())).await
    }

    /// Waits for a connection's first frame: like [`Self::read_frame`], but
    /// refuses the bytes as soon as the first one cannot start a CONNECT,
    /// without waiting for the length it declares.
    pub async fn read_connect_frame(
        &mut self,
    ) -> Result<Option<(FrameHeader, Bytes)>, ConnectionError> {
        self.read_frame_checked(frame::check_connect_start).await
    }

    /// [`Self::read_frame`], with `check` run on the buffered bytes before
    /// each attempt to frame them.
    async fn read_frame_checked(
        &mut self,
        check: fn(&[u8]) -> Result<(), FrameError>,
    ) -> Result<Option<(FrameHeader, Bytes)>, ConnectionError> {
        loop {
            check(&self.read_buf).map_err(ProtocolError::from)?;
            if let Some(frame) = self.buffered_frame()? {
                return Ok(Some(frame));
            }
            self.stream.readable().await?;
            if self.read_buf.capacity() - self.read_buf.len() < READ_CHUNK / 4 {
                self.read_buf.reserve(READ_CHUNK);
            }
            match self.stream.try_read_buf(&mut self.read_buf) {
                Ok(0) if self.read_buf.is_empty() => return Ok(None),
                Ok(0) => return Err(ConnectionError::Truncated),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Readiness was stale: don't hold a buffer while waiting.
                    if self.read_buf.is_empty() {
                        self.read_buf = BytesMut::new();
                    }
                }
                Err(e) => return Err(e.into()),
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
            self.stream.readable().await?;
            self.read_buf.reserve(READ_CHUNK / 4);
            match self.stream.try_read_buf(&mut self.read_buf) {
                Ok(0) => return Err(ConnectionError::Truncated),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Where packets to send are encoded; sent by [`Self::flush`].
    pub fn output(&mut self) -> &mut BytesMut {
        &mut self.write_buf
    }

    /// Sends everything encoded since the last flush in one write.
    pub async fn flush(&mut self, timeout: Duration) -> Result<(), ConnectionError> {
        if self.write_buf.is_empty() {
            return Ok(());
        }
        // Most writes fit the socket buffer at once: try without arming a
        // timer, and time only the rest (a client that is not reading).
        let written = match self.stream.try_write(&self.write_buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e.into()),
        };
        if written < self.write_buf.len() {
            let rest = &self.write_buf[written..];
            match tokio::time::timeout(timeout, self.stream.write_all(rest)).await {
                Ok(result) => result?,
                Err(_) => return Err(ConnectionError::WriteTimeout),
            }
        }
        // Release the allocation; an idle connection keeps no buffer.
        self.write_buf = BytesMut::new();
        Ok(())
    }

    /// Sends what is pending (best effort) and closes the socket.
    pub async fn close(mut self, timeout: Duration) {
        let _ = self.flush(timeout).await;
        let _ = tokio::time::timeout(timeout, self.stream.shutdown()).await;
    }
}
