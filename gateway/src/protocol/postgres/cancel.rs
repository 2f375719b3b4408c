//! CancelRequest mapping. The client gets a backend key made up by the gateway; the real key of
//! the upstream backend never leaves the gateway. A cancel arrives as a new (intercepted)
//! connection carrying the gateway's key; it is honoured only for a session of the same job.

use parking_lot::Mutex;
use std::{collections::HashMap, io, net::SocketAddr, time::Duration};

use bytes::{BufMut as _, BytesMut};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub upstream: SocketAddr,
    pub pid: i32,
    pub key: i32,
    /// cgroup of the job that owns the session.
    pub cgroup_id: u64,
    pub session_id: i64,
}

#[derive(Debug, Default)]
pub struct Registry {
    map: Mutex<HashMap<(i32, i32), Entry>>,
}

impl Registry {
    fn lock(&self) -> parking_lot::MutexGuard<'_, HashMap<(i32, i32), Entry>> {
        self.map.lock()
    }

    /// Registers a session's upstream key; returns the gateway key to give the client (a guessable
    /// key would let another client cancel the session's statements: no randomness, no key).
    pub fn register(&self, entry: Entry) -> Result<Registration<'_>, crate::random::RandomError> {
        let mut map = self.lock();
        loop {
            let raw = crate::random::bytes::<8>()?;
            // Positive pids look like pids to tools that print them.
            let pid = i32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]) & 0x7fff_ffff;
            let key = i32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]);
            if pid != 0 && !map.contains_key(&(pid, key)) {
                map.insert((pid, key), entry);
                return Ok(Registration {
                    registry: self,
                    pid,
                    key,
                });
            }
        }
    }

    pub fn lookup(&self, pid: i32, key: i32) -> Option<Entry> {
        self.lock().get(&(pid, key)).cloned()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Removes the key when the session ends.
pub struct Registration<'a> {
    registry: &'a Registry,
    pub pid: i32,
    pub key: i32,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.registry.lock().remove(&(self.pid, self.key));
    }
}

/// Sends the real CancelRequest to the upstream server and waits for it to close the connection
/// (the server answers nothing).
pub async fn forward(entry: &Entry, timeout: Duration) -> io::Result<()> {
    let work = async {
        let mut s = TcpStream::connect(entry.upstream).await?;
        let mut msg = BytesMut::with_capacity(16);
        msg.put_i32(16);
        msg.put_i32(80_877_102);
        msg.put_i32(entry.pid);
        msg.put_i32(entry.key);
        s.write_all(&msg).await?;
        let mut sink = [0u8; 64];
        while s.read(&mut sink).await? > 0 {}
        Ok(())
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "cancel not acknowledged"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_removed_with_the_session() {
        let r = Registry::default();
        let entry = Entry {
            upstream: "127.0.0.1:5432".parse().unwrap(),
            pid: 42,
            key: 7,
            cgroup_id: 1,
            session_id: 3,
        };
        let a = r.register(entry.clone()).unwrap();
        let b = r.register(entry.clone()).unwrap();
        assert_ne!((a.pid, a.key), (b.pid, b.key));
        assert!(a.pid > 0);
        assert_eq!(r.lookup(a.pid, a.key), Some(entry));
        let (pid, key) = (a.pid, a.key);
        drop(a);
        assert_eq!(r.lookup(pid, key), None);
        assert_eq!(r.len(), 1);
    }
}
