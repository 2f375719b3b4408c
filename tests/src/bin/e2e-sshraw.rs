//! A minimal SSH client that says what no well-behaved client says: after opening a session
//! channel it sends WINDOW_ADJUST messages of 0xFFFFFFFF bytes, many times over (the window
//! overflows 32 bits at the second one), also for channels that do not exist, then runs a command
//! and, after a pause in which it reads nothing, reads all of its output.
//!
//! Only what the gateway offers: curve25519-sha256, aes128-gcm@openssh.com, `none` login.
//!
//! usage: e2e-sshraw ADDR:PORT USER ADJUSTS PAUSE_SECS COMMAND
//! prints `bytes=N exit=S` (stdout bytes of the command, its exit status).
//!
//! With COMMAND `exec-nul` it runs `echo hi<NUL>; id`, a command no shell can take as text.
//!
//! With COMMAND `sftp-malformed` it opens the sftp subsystem instead, sends INIT and then an OPEN
//! request whose path length runs past the end of its packet, and prints the answer to that
//! request: `status id=N code=C`.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use aes_gcm::{
    Aes128Gcm, KeyInit,
    aead::{AeadInOut, Nonce, Tag},
};
use anyhow::{Context, Result, bail, ensure};
use curve25519_dalek::montgomery::MontgomeryPoint;
use sha2::{Digest, Sha256};

const KEXINIT: u8 = 20;
const NEWKEYS: u8 = 21;
const KEX_ECDH_INIT: u8 = 30;
const KEX_ECDH_REPLY: u8 = 31;

fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_be_bytes());
}

fn put_str(b: &mut Vec<u8>, s: &[u8]) {
    put_u32(b, s.len() as u32);
    b.extend_from_slice(s);
}

fn put_mpint(b: &mut Vec<u8>, v: &[u8]) {
    let mut v = v;
    while v.first() == Some(&0) {
        v = &v[1..];
    }
    if v.first().is_some_and(|&x| x & 0x80 != 0) {
        put_u32(b, v.len() as u32 + 1);
        b.push(0);
    } else {
        put_u32(b, v.len() as u32);
    }
    b.extend_from_slice(v);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8> {
        let (&x, rest) = self.0.split_first().context("short packet")?;
        self.0 = rest;
        Ok(x)
    }
    fn u32(&mut self) -> Result<u32> {
        ensure!(self.0.len() >= 4, "short packet");
        let (a, rest) = self.0.split_at(4);
        self.0 = rest;
        Ok(u32::from_be_bytes(a.try_into()?))
    }
    fn string(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        ensure!(self.0.len() >= n, "short packet");
        let (a, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(a)
    }
}

/// One direction of aes128-gcm@openssh.com (RFC 5647 with OpenSSH's framing).
struct Gcm {
    cipher: Aes128Gcm,
    iv: [u8; 12],
}

impl Gcm {
    fn new(key: &[u8], iv: &[u8]) -> Result<Gcm> {
        Ok(Gcm {
            cipher: Aes128Gcm::new_from_slice(&key[..16]).map_err(|e| anyhow::anyhow!("{e}"))?,
            iv: iv[..12].try_into()?,
        })
    }
    fn nonce(&self) -> Nonce<Aes128Gcm> {
        Nonce::<Aes128Gcm>::try_from(&self.iv[..]).expect("12 bytes")
    }
    fn next(&mut self) {
        let mut counter = u64::from_be_bytes(self.iv[4..].try_into().expect("8 bytes"));
        counter = counter.wrapping_add(1);
        self.iv[4..].copy_from_slice(&counter.to_be_bytes());
    }
}

struct Conn {
    sock: TcpStream,
    send: Option<Gcm>,
    recv: Option<Gcm>,
}

impl Conn {
    fn write_packet(&mut self, payload: &[u8]) -> Result<()> {
        // Padding length, payload and padding (with GCM), or the whole packet (in the clear),
        // are a multiple of the block size.
        let (block, unpadded) = if self.send.is_some() {
            (16, 1 + payload.len())
        } else {
            (8, 4 + 1 + payload.len())
        };
        let mut pad = block - unpadded % block;
        if pad < 4 {
            pad += block;
        }
        let mut body = Vec::with_capacity(1 + payload.len() + pad);
        body.push(pad as u8);
        body.extend_from_slice(payload);
        body.extend(std::iter::repeat_n(0u8, pad));
        let len = (body.len() as u32).to_be_bytes();
        let mut out = Vec::with_capacity(4 + body.len() + 16);
        out.extend_from_slice(&len);
        match &mut self.send {
            None => out.extend_from_slice(&body),
            Some(g) => {
                let tag = g
                    .cipher
                    .encrypt_inout_detached(&g.nonce(), &len, body.as_mut_slice().into())
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                g.next();
                out.extend_from_slice(&body);
                out.extend_from_slice(&tag);
            }
        }
        self.sock.write_all(&out)?;
        Ok(())
    }

    fn read_packet(&mut self) -> Result<Vec<u8>> {
        let mut len = [0u8; 4];
        self.sock.read_exact(&mut len)?;
        let n = u32::from_be_bytes(len) as usize;
        ensure!(n <= 256 * 1024, "packet of {n} bytes");
        let tag_len = if self.recv.is_some() { 16 } else { 0 };
        let mut body = vec![0u8; n + tag_len];
        self.sock.read_exact(&mut body)?;
        if let Some(g) = &mut self.recv {
            let tag = Tag::<Aes128Gcm>::try_from(&body[n..]).expect("16 bytes");
            g.cipher
                .decrypt_inout_detached(&g.nonce(), &len, body[..n].as_mut().into(), &tag)
                .map_err(|e| anyhow::anyhow!("decrypt: {e}"))?;
            g.next();
            body.truncate(n);
        }
        let pad = *body.first().context("empty packet")? as usize;
        ensure!(pad < body.len(), "bad padding");
        Ok(body[1..body.len() - pad].to_vec())
    }

    /// The next packet that is not transport noise (ignore, debug, ext-info, global requests).
    fn next(&mut self) -> Result<Vec<u8>> {
        loop {
            let p = self.read_packet()?;
            match p.first() {
                Some(2 | 4 | 7) => continue,
                Some(80) => {
                    // A global request (keepalive): answer failure if a reply is wanted.
                    let mut r = Reader(&p[1..]);
                    r.string()?;
                    if r.u8()? != 0 {
                        self.write_packet(&[82])?;
                    }
                }
                Some(_) => return Ok(p),
                None => bail!("empty payload"),
            }
        }
    }
}

fn namelist(b: &mut Vec<u8>, s: &str) {
    put_str(b, s.as_bytes());
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}

fn derive(k: &[u8], h: &[u8], letter: u8, session_id: &[u8]) -> Vec<u8> {
    let mut d = Sha256::new();
    let mut kb = Vec::new();
    put_mpint(&mut kb, k);
    d.update(&kb);
    d.update(h);
    d.update([letter]);
    d.update(session_id);
    d.finalize().to_vec()
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    ensure!(
        args.len() == 6,
        "usage: e2e-sshraw ADDR:PORT USER ADJUSTS PAUSE_SECS COMMAND"
    );
    let (addr, user, adjusts, pause, command) = (
        &args[1],
        &args[2],
        args[3].parse::<u32>()?,
        args[4].parse::<u64>()?,
        &args[5],
    );
    let sock = TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut c = Conn {
        sock,
        send: None,
        recv: None,
    };

    // Versions.
    let v_c = b"SSH-2.0-e2e-sshraw".to_vec();
    c.sock.write_all(&[&v_c[..], b"\r\n"].concat())?;
    let v_s = loop {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\n") {
            c.sock.read_exact(&mut byte)?;
            line.push(byte[0]);
            ensure!(line.len() < 1024, "banner line too long");
        }
        let line = line
            .strip_suffix(b"\r\n")
            .or(line.strip_suffix(b"\n"))
            .unwrap_or(&line)
            .to_vec();
        if line.starts_with(b"SSH-") {
            break line;
        }
    };

    // Key exchange: curve25519-sha256.
    let mut i_c = vec![KEXINIT];
    i_c.extend_from_slice(&random::<16>()?);
    for list in [
        "curve25519-sha256,curve25519-sha256@libssh.org",
        "ssh-ed25519,rsa-sha2-512,rsa-sha2-256,ecdsa-sha2-nistp256",
        "aes128-gcm@openssh.com",
        "aes128-gcm@openssh.com",
        "hmac-sha2-256,hmac-sha2-256-etm@openssh.com",
        "hmac-sha2-256,hmac-sha2-256-etm@openssh.com",
        "none",
        "none",
        "",
        "",
    ] {
        namelist(&mut i_c, list);
    }
    i_c.push(0);
    put_u32(&mut i_c, 0);
    c.write_packet(&i_c)?;
    let i_s = c.next()?;
    ensure!(i_s.first() == Some(&KEXINIT), "expected KEXINIT");
    let secret = random::<32>()?;
    let q_c = MontgomeryPoint::mul_base_clamped(secret).to_bytes();
    let mut init = vec![KEX_ECDH_INIT];
    put_str(&mut init, &q_c);
    c.write_packet(&init)?;
    let reply = c.next()?;
    ensure!(
        reply.first() == Some(&KEX_ECDH_REPLY),
        "expected KEX_ECDH_REPLY"
    );
    let mut r = Reader(&reply[1..]);
    let k_s = r.string()?.to_vec();
    let q_s: [u8; 32] = r.string()?.try_into()?;
    // The host key signature is not checked: this client attacks, it does not trust.
    let k = MontgomeryPoint(q_s).mul_clamped(secret).to_bytes();
    let mut h = Sha256::new();
    let mut buf = Vec::new();
    for s in [&v_c[..], &v_s, &i_c, &i_s, &k_s, &q_c, &q_s] {
        put_str(&mut buf, s);
    }
    put_mpint(&mut buf, &k);
    h.update(&buf);
    let h = h.finalize().to_vec();
    c.write_packet(&[NEWKEYS])?;
    ensure!(c.next()?.first() == Some(&NEWKEYS), "expected NEWKEYS");
    let sid = h.clone();
    c.send = Some(Gcm::new(
        &derive(&k, &h, b'C', &sid),
        &derive(&k, &h, b'A', &sid),
    )?);
    c.recv = Some(Gcm::new(
        &derive(&k, &h, b'D', &sid),
        &derive(&k, &h, b'B', &sid),
    )?);

    // Login with `none`.
    let mut p = vec![5];
    put_str(&mut p, b"ssh-userauth");
    c.write_packet(&p)?;
    ensure!(c.next()?.first() == Some(&6), "expected SERVICE_ACCEPT");
    let mut p = vec![50];
    put_str(&mut p, user.as_bytes());
    put_str(&mut p, b"ssh-connection");
    put_str(&mut p, b"none");
    c.write_packet(&p)?;
    loop {
        let p = c.next()?;
        match p[0] {
            52 => break,
            53 => continue,
            other => bail!("login refused (message {other})"),
        }
    }

    // A session channel with a modest window: the adjusts that follow are what is huge.
    let mut p = vec![90];
    put_str(&mut p, b"session");
    put_u32(&mut p, 0);
    put_u32(&mut p, 2 * 1024 * 1024);
    put_u32(&mut p, 32768);
    c.write_packet(&p)?;
    let remote = loop {
        let p = c.next()?;
        match p[0] {
            91 => {
                let mut r = Reader(&p[1..]);
                ensure!(r.u32()? == 0, "confirmation for another channel");
                break r.u32()?;
            }
            92 => bail!("channel open refused"),
            _ => continue,
        }
    };
    for i in 0..adjusts {
        let mut p = vec![93];
        // Every 64th goes to a channel that does not exist.
        put_u32(
            &mut p,
            if i % 64 == 63 {
                remote.wrapping_add(1000)
            } else {
                remote
            },
        );
        put_u32(&mut p, u32::MAX);
        c.write_packet(&p)?;
    }
    if command == "sftp-malformed" {
        return sftp_malformed_request(&mut c, remote);
    }
    let mut p = vec![98];
    put_u32(&mut p, remote);
    put_str(&mut p, b"exec");
    p.push(1);
    if command == "exec-nul" {
        put_str(&mut p, b"echo hi\0; id");
    } else {
        put_str(&mut p, command.as_bytes());
    }
    c.write_packet(&p)?;
    // Read nothing for a while: the gateway may send as much as it believes the window allows.
    eprintln!("paused");
    std::thread::sleep(Duration::from_secs(pause));

    let (mut bytes, mut exit) = (0u64, None);
    loop {
        let p = c.next()?;
        let mut r = Reader(&p[1..]);
        match p[0] {
            94 => {
                r.u32()?;
                bytes += r.string()?.len() as u64;
            }
            95 => {
                r.u32()?;
                r.u32()?;
                std::io::stderr().write_all(r.string()?)?;
            }
            98 => {
                r.u32()?;
                if r.string()? == b"exit-status" {
                    r.u8()?;
                    exit = Some(r.u32()?);
                }
            }
            100 => bail!("the command was refused"),
            97 => {
                let mut p = vec![97];
                put_u32(&mut p, remote);
                let _ = c.write_packet(&p);
                break;
            }
            // Success, window adjusts, EOF.
            _ => {}
        }
    }
    println!(
        "bytes={bytes} exit={}",
        exit.map_or("none".into(), |e| e.to_string())
    );
    Ok(())
}

fn sftp_malformed_request(c: &mut Conn, remote: u32) -> Result<()> {
    let mut p = vec![98];
    put_u32(&mut p, remote);
    put_str(&mut p, b"subsystem");
    p.push(1);
    put_str(&mut p, b"sftp");
    c.write_packet(&p)?;
    // One sftp packet (uint32 length, then type and fields) per channel data message.
    let send = |c: &mut Conn, sftp: &[u8]| {
        let mut framed = Vec::new();
        put_str(&mut framed, sftp);
        let mut p = vec![94];
        put_u32(&mut p, remote);
        put_str(&mut p, &framed);
        c.write_packet(&p)
    };
    send(c, &[1, 0, 0, 0, 3])?; // INIT, version 3
    let mut open = vec![3]; // OPEN, id 77, a path said to be 1000 bytes long that is 3
    put_u32(&mut open, 77);
    put_u32(&mut open, 1000);
    open.extend_from_slice(b"abc");
    send(c, &open)?;
    let mut stream = Vec::new();
    loop {
        let p = c.next()?;
        match p[0] {
            94 => {
                let mut r = Reader(&p[1..]);
                r.u32()?;
                stream.extend_from_slice(r.string()?);
            }
            96 | 97 => bail!("the channel closed before an answer"),
            100 => bail!("the sftp subsystem was refused"),
            _ => continue,
        }
        while stream.len() >= 4 {
            let len = u32::from_be_bytes(stream[..4].try_into()?) as usize;
            if stream.len() < 4 + len {
                break;
            }
            let packet: Vec<u8> = stream.drain(..4 + len).collect();
            // STATUS: type 101, id, code.
            if packet.get(4) == Some(&101) && packet.len() >= 13 {
                let id = u32::from_be_bytes(packet[5..9].try_into()?);
                let code = u32::from_be_bytes(packet[9..13].try_into()?);
                println!("status id={id} code={code}");
                return Ok(());
            }
        }
    }
}
