//! Message framing: split a byte stream into whole PostgreSQL messages, checking every length
//! before trusting it. Typed decoding (pgwire) happens on whole frames only, so a short or lying
//! length can never make a decoder read past its message.

use bytes::{Buf as _, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _};

/// Startup-phase packets (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest): PostgreSQL's
/// own limit.
pub const MAX_STARTUP_PACKET: usize = 10_000;
/// Backend messages: a DataRow may hold a 1 GiB value.
pub const MAX_BACKEND_MESSAGE: usize = 0x4000_0000 + 1024;

/// One whole message: `bytes` holds the type byte (absent for startup packets), the length and the
/// body, exactly as on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub bytes: Bytes,
}

impl Frame {
    /// The body after type byte and length.
    pub fn body(&self) -> &[u8] {
        &self.bytes[5..]
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("message {tag:?} declares length {len}, more than the {max} bytes allowed")]
    TooLarge { tag: char, len: usize, max: usize },
    #[error("message {tag:?} declares length {len}, less than its own length field")]
    BadLength { tag: char, len: i64 },
    #[error("startup packet declares length {len} (allowed: 8 to {MAX_STARTUP_PACKET})")]
    BadStartupLength { len: i64 },
    #[error("connection closed in the middle of a message ({0} bytes pending)")]
    Truncated(usize),
}

/// Takes one typed message off the front of `buf`, if it is complete.
pub fn split(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::BadLength {
            tag: char::from(tag),
            len: i64::from(len),
        });
    }
    let len = len as usize;
    if len > max {
        return Err(FrameError::TooLarge {
            tag: char::from(tag),
            len,
            max,
        });
    }
    if buf.len() < len + 1 {
        buf.reserve(len + 1 - buf.len());
        return Ok(None);
    }
    Ok(Some(Frame {
        tag,
        bytes: buf.split_to(len + 1).freeze(),
    }))
}

/// Takes one untyped startup-phase packet (length, then body) off the front of `buf`.
pub fn split_startup(buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if !(8..=MAX_STARTUP_PACKET as i32).contains(&len) {
        return Err(FrameError::BadStartupLength {
            len: i64::from(len),
        });
    }
    let len = len as usize;
    if buf.len() < len {
        return Ok(None);
    }
    Ok(Some(buf.split_to(len).freeze()))
}

/// The request code of a startup packet (protocol version, or SSL/GSS/cancel codes).
pub fn startup_code(packet: &[u8]) -> i32 {
    (&packet[4..8]).get_i32()
}

/// Reads whole messages from one side of a connection.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max: usize,
}

/// Read buffers start small (idle connections stay cheap) and grow to the largest message seen.
const INITIAL_BUFFER: usize = 2048;
const READ_CHUNK: usize = 16 * 1024;

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, max: usize) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(INITIAL_BUFFER),
            max,
        }
    }

    /// Continues with bytes already read past the end of a previous phase.
    pub fn with_buffer(inner: R, buf: BytesMut, max: usize) -> Self {
        FrameReader { inner, buf, max }
    }

    /// A complete message already buffered, without reading.
    pub fn buffered(&mut self) -> Result<Option<Frame>, FrameError> {
        split(&mut self.buf, self.max)
    }

    /// Reads more bytes; `Ok(false)` at a clean end of stream.
    pub async fn fill(&mut self) -> Result<bool, ReadError> {
        if self.buf.capacity() - self.buf.len() < 512 {
            self.buf
                .reserve(READ_CHUNK.max(self.buf.len() / 2).min(self.max));
        }
        let n = self.inner.read_buf(&mut self.buf).await?;
        if n == 0 {
            if self.buf.is_empty() {
                return Ok(false);
            }
            return Err(ReadError::Frame(FrameError::Truncated(self.buf.len())));
        }
        Ok(true)
    }

    /// The next message, reading as needed; `None` at a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            if let Some(f) = self.buffered()? {
                return Ok(Some(f));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// The bytes read but not yet taken as messages.
    pub fn into_buffer(self) -> BytesMut {
        self.buf
    }

    /// Gives back the unread bytes when idle buffers should shrink.
    pub fn shrink(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 4 * READ_CHUNK {
            self.buf = BytesMut::with_capacity(INITIAL_BUFFER);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}
