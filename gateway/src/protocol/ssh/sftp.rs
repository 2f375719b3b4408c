//! SFTP (version 3, as OpenSSH speaks it) seen from the middle: packet framing both ways, requests
//! turned into typed operations for policy, responses read for handles, results and sizes, and the
//! STATUS reply the gateway sends for a refused request. scp speaks SFTP since OpenSSH 9.

use std::collections::HashMap;

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};

use crate::config::SshOperationKind;

/// Largest packet accepted either way (OpenSSH's sftp-server allows 256 KiB).
pub(super) const MAX_PACKET: usize = 1024 * 1024;

const INIT: u8 = 1;
const OPEN: u8 = 3;
const CLOSE: u8 = 4;
const READ: u8 = 5;
const WRITE: u8 = 6;
const LSTAT: u8 = 7;
const FSTAT: u8 = 8;
const SETSTAT: u8 = 9;
const FSETSTAT: u8 = 10;
const OPENDIR: u8 = 11;
const READDIR: u8 = 12;
const REMOVE: u8 = 13;
const MKDIR: u8 = 14;
const RMDIR: u8 = 15;
const REALPATH: u8 = 16;
const STAT: u8 = 17;
const RENAME: u8 = 18;
const READLINK: u8 = 19;
const SYMLINK: u8 = 20;
const EXTENDED: u8 = 200;

const STATUS: u8 = 101;
const HANDLE: u8 = 102;
const DATA: u8 = 103;

pub(super) const FX_OK: u32 = 0;
pub(super) const FX_PERMISSION_DENIED: u32 = 3;
pub(super) const FX_BAD_MESSAGE: u32 = 5;
pub(super) const FX_OP_UNSUPPORTED: u32 = 8;

const PFLAG_READ: u32 = 1;
const PFLAG_WRITE: u32 = 2;
const PFLAG_APPEND: u32 = 4;
const PFLAG_CREAT: u32 = 8;
const PFLAG_TRUNC: u32 = 0x10;

/// Longest path accepted (Linux's PATH_MAX): the host would refuse a longer one.
pub(super) const MAX_PATH: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum SftpError {
    #[error("sftp packet of {0} bytes exceeds the {MAX_PACKET}-byte limit")]
    TooLarge(usize),
    #[error("malformed sftp packet (type {0})")]
    Malformed(u8),
    /// Paths are matched and recorded as text: one the gateway cannot show as it is, is refused.
    #[error("sftp path {0}")]
    BadPath(&'static str),
}

/// Splits a byte stream into whole SFTP packets (length prefix included).
#[derive(Default)]
pub(super) struct Framer {
    buf: BytesMut,
}

impl Framer {
    pub(super) fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    pub(super) fn next_packet(&mut self) -> Option<Result<Bytes, SftpError>> {
        if self.buf.len() < 4 {
            return None;
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > MAX_PACKET || len == 0 {
            return Some(Err(SftpError::TooLarge(len)));
        }
        if self.buf.len() < 4 + len {
            return None;
        }
        Some(Ok(self.buf.split_to(4 + len).freeze()))
    }

    /// Bytes of an incomplete packet held back.
    pub(super) fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Drops what is buffered; returns how many bytes that was.
    pub(super) fn clear(&mut self) -> usize {
        let n = self.buf.len();
        self.buf.clear();
        n
    }
}

/// A reader over one packet's body.
struct Reader<'a>(&'a [u8], u8);

impl<'a> Reader<'a> {
    fn u32(&mut self) -> Result<u32, SftpError> {
        if self.0.len() < 4 {
            return Err(SftpError::Malformed(self.1));
        }
        Ok(self.0.get_u32())
    }

    fn u64(&mut self) -> Result<u64, SftpError> {
        if self.0.len() < 8 {
            return Err(SftpError::Malformed(self.1));
        }
        Ok(self.0.get_u64())
    }

    fn bytes(&mut self) -> Result<&'a [u8], SftpError> {
        let n = self.u32()? as usize;
        if self.0.len() < n {
            return Err(SftpError::Malformed(self.1));
        }
        let (s, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(s)
    }

    fn string(&mut self) -> Result<String, SftpError> {
        Ok(String::from_utf8_lossy(self.bytes()?).into_owned())
    }

    /// A path: UTF-8 without NUL (the host reads C strings), at most `MAX_PATH` bytes.
    fn path(&mut self) -> Result<String, SftpError> {
        let b = self.bytes()?;
        if b.len() > MAX_PATH {
            return Err(SftpError::BadPath("longer than 4096 bytes"));
        }
        if b.contains(&0) {
            return Err(SftpError::BadPath("contains a NUL byte"));
        }
        String::from_utf8(b.to_vec()).map_err(|_| SftpError::BadPath("is not UTF-8"))
    }
}

/// A request from the job, as policy and the recording need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Request {
    /// INIT: version negotiation, no id.
    Init,
    Open {
        id: u32,
        path: String,
        read: bool,
        write: bool,
    },
    Close {
        id: u32,
        handle: Vec<u8>,
    },
    Read {
        id: u32,
        handle: Vec<u8>,
    },
    Write {
        id: u32,
        handle: Vec<u8>,
        len: usize,
    },
    /// A request on paths: `op` names it for the log; every path is checked as `kind`.
    Paths {
        id: u32,
        op: &'static str,
        checks: Vec<(SshOperationKind, String)>,
        /// Metadata reads are checked but not logged (scp and sftp issue many).
        logged: bool,
    },
    /// A request on an open handle (fstat, readdir, fsetstat, fsync, …): checked as `kind` on the
    /// handle's path.
    OnHandle {
        id: u32,
        op: &'static str,
        kind: SshOperationKind,
        handle: Vec<u8>,
    },
    /// An extension the gateway does not understand: refused.
    Unsupported {
        id: u32,
        op: String,
    },
}

impl Request {
    pub(super) fn id(&self) -> Option<u32> {
        match self {
            Request::Init => None,
            Request::Open { id, .. }
            | Request::Close { id, .. }
            | Request::Read { id, .. }
            | Request::Write { id, .. }
            | Request::Paths { id, .. }
            | Request::OnHandle { id, .. }
            | Request::Unsupported { id, .. } => Some(*id),
        }
    }
}

/// Parses one request packet (length prefix included).
pub(super) fn parse_request(packet: &[u8]) -> Result<Request, SftpError> {
    let kind = *packet.get(4).ok_or(SftpError::Malformed(0))?;
    let mut r = Reader(&packet[5..], kind);
    if kind == INIT {
        return Ok(Request::Init);
    }
    let id = r.u32()?;
    use SshOperationKind::{SftpDelete, SftpList, SftpWrite};
    let paths = |op, checks, logged| Request::Paths {
        id,
        op,
        checks,
        logged,
    };
    Ok(match kind {
        OPEN => {
            let path = r.path()?;
            let flags = r.u32()?;
            Request::Open {
                id,
                path,
                read: flags & PFLAG_READ != 0,
                write: flags & (PFLAG_WRITE | PFLAG_APPEND | PFLAG_CREAT | PFLAG_TRUNC) != 0,
            }
        }
        CLOSE => Request::Close {
            id,
            handle: r.bytes()?.to_vec(),
        },
        READ => Request::Read {
            id,
            handle: r.bytes()?.to_vec(),
        },
        WRITE => {
            let handle = r.bytes()?.to_vec();
            let _offset = r.u64()?;
            let len = r.bytes()?.len();
            Request::Write { id, handle, len }
        }
        LSTAT | STAT | REALPATH | READLINK => {
            let op = match kind {
                LSTAT => "lstat",
                STAT => "stat",
                REALPATH => "realpath",
                _ => "readlink",
            };
            paths(op, vec![(SftpList, r.path()?)], false)
        }
        OPENDIR => paths("opendir", vec![(SftpList, r.path()?)], true),
        SETSTAT => paths("setstat", vec![(SftpWrite, r.path()?)], true),
        MKDIR => paths("mkdir", vec![(SftpWrite, r.path()?)], true),
        REMOVE => paths("remove", vec![(SftpDelete, r.path()?)], true),
        RMDIR => paths("rmdir", vec![(SftpDelete, r.path()?)], true),
        RENAME => {
            let from = r.path()?;
            let to = r.path()?;
            paths("rename", vec![(SftpDelete, from), (SftpWrite, to)], true)
        }
        SYMLINK => {
            // OpenSSH sends (target, link) in the reverse of the draft's order: check both as writes.
            let a = r.path()?;
            let b = r.path()?;
            paths("symlink", vec![(SftpWrite, a), (SftpWrite, b)], true)
        }
        FSTAT | READDIR | FSETSTAT => {
            let (op, k) = match kind {
                FSTAT => ("fstat", SftpList),
                READDIR => ("readdir", SftpList),
                _ => ("fsetstat", SftpWrite),
            };
            Request::OnHandle {
                id,
                op,
                kind: k,
                handle: r.bytes()?.to_vec(),
            }
        }
        EXTENDED => extended(id, &mut r)?,
        other => Request::Unsupported {
            id,
            op: format!("type {other}"),
        },
    })
}

fn extended(id: u32, r: &mut Reader<'_>) -> Result<Request, SftpError> {
    use SshOperationKind::{SftpDelete, SftpList, SftpRead, SftpWrite};
    let name = r.string()?;
    let paths = |op, checks, logged| Request::Paths {
        id,
        op,
        checks,
        logged,
    };
    Ok(match name.as_str() {
        "posix-rename@openssh.com" => {
            let from = r.path()?;
            let to = r.path()?;
            paths("rename", vec![(SftpDelete, from), (SftpWrite, to)], true)
        }
        "hardlink@openssh.com" => {
            let from = r.path()?;
            let to = r.path()?;
            paths("hardlink", vec![(SftpRead, from), (SftpWrite, to)], true)
        }
        "lsetstat@openssh.com" => paths("setstat", vec![(SftpWrite, r.path()?)], true),
        "statvfs@openssh.com" | "expand-path@openssh.com" => {
            paths("stat", vec![(SftpList, r.path()?)], false)
        }
        "fsync@openssh.com" | "fstatvfs@openssh.com" => Request::OnHandle {
            id,
            op: "fsync",
            kind: SftpList,
            handle: r.bytes()?.to_vec(),
        },
        // Answers about the server, no file touched.
        "limits@openssh.com" | "home-directory" | "users-groups-by-id@openssh.com" => {
            paths("info", Vec::new(), false)
        }
        // copy-data copies between two handles that were opened (and checked) already.
        "copy-data" => paths("copy-data", Vec::new(), true),
        _ => Request::Unsupported { id, op: name },
    })
}

/// A response from the host, as far as the gateway follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Status { id: u32, code: u32 },
    Handle { id: u32, handle: Vec<u8> },
    Data { id: u32, len: usize },
    Other,
}

pub(super) fn parse_response(packet: &[u8]) -> Result<Response, SftpError> {
    let kind = *packet.get(4).ok_or(SftpError::Malformed(0))?;
    let mut r = Reader(&packet[5..], kind);
    Ok(match kind {
        STATUS => {
            let id = r.u32()?;
            Response::Status { id, code: r.u32()? }
        }
        HANDLE => {
            let id = r.u32()?;
            Response::Handle {
                id,
                handle: r.bytes()?.to_vec(),
            }
        }
        DATA => {
            let id = r.u32()?;
            Response::Data {
                id,
                len: r.bytes()?.len(),
            }
        }
        _ => Response::Other,
    })
}

const NAME: u8 = 104;
const ATTRS: u8 = 105;
const ATTR_SIZE: u32 = 1;
const ATTR_UIDGID: u32 = 2;
const ATTR_PERMISSIONS: u32 = 4;
const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;

pub(super) const FX_NO_SUCH_FILE: u32 = 2;
pub(super) const FX_FAILURE: u32 = 4;

/// A request of the gateway's own (`INIT`, `REALPATH`, `STAT`).
pub(super) fn request(kind: u8, id: Option<u32>, path: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(16 + path.len());
    let len = 1 + if id.is_some() { 8 + path.len() } else { 4 };
    b.put_u32(len as u32);
    b.put_u8(kind);
    match id {
        Some(id) => {
            b.put_u32(id);
            b.put_u32(path.len() as u32);
            b.put_slice(path);
        }
        None => b.put_u32(3), // INIT: version 3
    }
    b.freeze()
}

pub(super) fn init() -> Bytes {
    request(INIT, None, &[])
}

pub(super) fn realpath(id: u32, path: &str) -> Bytes {
    request(REALPATH, Some(id), path.as_bytes())
}

pub(super) fn stat(id: u32, path: &str) -> Bytes {
    request(STAT, Some(id), path.as_bytes())
}

/// The answer to a REALPATH or STAT of the gateway's.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Answer {
    /// NAME: the first name.
    Name(String),
    /// ATTRS: whether it is a directory.
    Attrs {
        directory: bool,
    },
    Status(u32),
    /// VERSION, or something the gateway did not ask for.
    Other,
}

/// The request id a response answers (none for VERSION), and what it says.
pub(super) fn answer(packet: &[u8]) -> Result<(Option<u32>, Answer), SftpError> {
    let kind = *packet.get(4).ok_or(SftpError::Malformed(0))?;
    let mut r = Reader(&packet[5..], kind);
    if !matches!(kind, NAME | ATTRS | STATUS) {
        return Ok((None, Answer::Other));
    }
    let id = r.u32()?;
    let answer = match kind {
        NAME => {
            if r.u32()? == 0 {
                return Err(SftpError::Malformed(kind));
            }
            Answer::Name(
                String::from_utf8(r.bytes()?.to_vec())
                    .map_err(|_| SftpError::BadPath("is not UTF-8"))?,
            )
        }
        ATTRS => {
            let flags = r.u32()?;
            if flags & ATTR_SIZE != 0 {
                r.u64()?;
            }
            if flags & ATTR_UIDGID != 0 {
                r.u32()?;
                r.u32()?;
            }
            let directory = flags & ATTR_PERMISSIONS != 0 && r.u32()? & S_IFMT == S_IFDIR;
            Answer::Attrs { directory }
        }
        _ => Answer::Status(r.u32()?),
    };
    Ok((Some(id), answer))
}

/// SSH_FXP_STATUS for request `id`.
pub(super) fn status(id: u32, code: u32, message: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(32 + message.len());
    let body = 1 + 4 + 4 + 4 + message.len() + 4;
    b.put_u32(body as u32);
    b.put_u8(STATUS);
    b.put_u32(id);
    b.put_u32(code);
    b.put_u32(message.len() as u32);
    b.put_slice(message.as_bytes());
    b.put_u32(0); // language tag
    b.freeze()
}

/// An open file or directory the job holds, with what went through it.
#[derive(Debug, Clone, Default)]
pub struct OpenFile {
    pub path: String,
    pub mode: &'static str,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

/// What a request waits for, so that its response can be understood.
#[derive(Debug, Clone)]
pub enum Pending {
    Open(OpenFile),
    Read(Vec<u8>),
    Close(Vec<u8>),
}

/// Requests in flight and handles open on one sftp channel. Bounded: past `LIMIT` entries new
/// ones are not tracked (sizes then go uncounted, nothing else changes).
#[derive(Debug, Default)]
pub struct Tracker {
    pending: HashMap<u32, Pending>,
    handles: HashMap<Vec<u8>, OpenFile>,
}

const LIMIT: usize = 4096;

/// What a response completed, for the recording.
#[derive(Debug, PartialEq, Eq)]
pub enum Completed {
    Nothing,
    /// A file or directory was closed: what went through it.
    Closed {
        path: String,
        mode: &'static str,
        bytes_read: u64,
        bytes_written: u64,
    },
}

impl Tracker {
    pub fn expect(&mut self, id: u32, p: Pending) {
        if self.pending.len() < LIMIT {
            self.pending.insert(id, p);
        }
    }

    pub fn path_of(&self, handle: &[u8]) -> Option<&str> {
        self.handles.get(handle).map(|f| f.path.as_str())
    }

    pub fn wrote(&mut self, handle: &[u8], n: usize) {
        if let Some(f) = self.handles.get_mut(handle) {
            f.bytes_written += n as u64;
        }
    }

    pub fn response(&mut self, r: &Response) -> Completed {
        match r {
            Response::Handle { id, handle } => {
                if let Some(Pending::Open(f)) = self.pending.remove(id)
                    && self.handles.len() < LIMIT
                {
                    self.handles.insert(handle.clone(), f);
                }
            }
            Response::Data { id, len } => {
                if let Some(Pending::Read(h)) = self.pending.remove(id)
                    && let Some(f) = self.handles.get_mut(&h)
                {
                    f.bytes_read += *len as u64;
                }
            }
            Response::Status { id, code } => {
                if let Some(Pending::Close(h)) = self.pending.remove(id)
                    && *code == FX_OK
                    && let Some(f) = self.handles.remove(&h)
                {
                    return Completed::Closed {
                        path: f.path,
                        mode: f.mode,
                        bytes_read: f.bytes_read,
                        bytes_written: f.bytes_written,
                    };
                }
            }
            Response::Other => {}
        }
        Completed::Nothing
    }
}

#[cfg(test)]
mod tests;
