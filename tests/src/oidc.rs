//! A real OIDC issuer for the identity tests: npm `oidc-provider` (tests/peers/oidc/issuer.mjs) on
//! loopback, serving discovery and JWKS over HTTPS with a CA this module makes per test, and
//! minting tokens the way CI providers do. Also forges tokens (with the issuer's own key, or
//! another) for the bad-input cases, so each is refused for exactly the reason it tests.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;

use crate::{Process, run_ok, unique_id, wait_until};

/// tests/peers/oidc, where `tests/peers/install.sh` put `oidc-provider`.
pub fn peer_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/oidc")
}

/// Panics with the fix when the issuer is not installed (setup installs it; tests must not skip).
pub fn require_installed() {
    let marker = peer_dir().join("node_modules/oidc-provider/package.json");
    assert!(
        marker.exists(),
        "oidc-provider is not installed in {}: run `cargo xtask setup` (or tests/peers/install.sh)",
        peer_dir().display()
    );
}

/// A CA and a certificate for 127.0.0.1 signed by it, made with openssl.
pub struct TestCa {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path) -> Result<TestCa> {
        let pki = crate::pki::TestPki::new(dir, "issuer")?;
        let (cert, key) = pki.issue("issuer-tls", "IP:127.0.0.1")?;
        Ok(TestCa {
            ca: pki.ca,
            cert,
            key,
        })
    }
}

/// An RSA signing key: PEM file on disk and its `kid`.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub pem: PathBuf,
}

impl SigningKey {
    pub fn generate(dir: &Path, kid: &str) -> Result<SigningKey> {
        let pem = dir.join(format!("signing-{kid}.pem"));
        run_ok(
            Command::new("openssl")
                .args(["genrsa", "-traditional", "-out"])
                .arg(&pem)
                .arg("2048"),
        )?;
        Ok(SigningKey {
            kid: kid.to_string(),
            pem,
        })
    }

    pub fn encoding_key(&self) -> Result<EncodingKey> {
        Ok(EncodingKey::from_rsa_pem(&fs::read(&self.pem)?)?)
    }

    /// The public half as PEM (what a key-confusion forgery uses as an HMAC secret).
    pub fn public_pem(&self) -> Result<Vec<u8>> {
        let out = run_ok(
            Command::new("openssl")
                .args(["rsa", "-pubout", "-in"])
                .arg(&self.pem),
        )?;
        Ok(out.into_bytes())
    }

    /// Signs `claims` (RS256) with this key.
    pub fn sign(&self, claims: &Value) -> Result<String> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(
            &header,
            claims,
            &self.encoding_key()?,
        )?)
    }
}

/// What `Issuer::start` serves.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Real,
    /// Everything answered with a body that is not JSON.
    JunkDiscovery,
    /// A good discovery document whose JWKS is junk.
    JunkJwks,
}

pub struct Issuer {
    pub url: String,
    pub tls: TestCa,
    keys_file: PathBuf,
    pub keys: Vec<SigningKey>,
    dir: PathBuf,
    process: Process,
}

impl Issuer {
    /// Starts an issuer signing with a fresh key `kid` "k1"; files go to `dir`.
    pub fn start(dir: &Path, mode: Mode) -> Result<Issuer> {
        Self::start_with_redirects(dir, mode, &[])
    }

    /// Like [`Issuer::start`], with extra redirect URIs for the `web-approvals` client.
    pub fn start_with_redirects(dir: &Path, mode: Mode, redirects: &[String]) -> Result<Issuer> {
        require_installed();
        let dir = dir.join(format!("issuer-{}", unique_id()));
        fs::create_dir_all(&dir)?;
        let tls = TestCa::new(&dir)?;
        let key = SigningKey::generate(&dir, "k1")?;
        let keys_file = dir.join("keys");
        write_keys(&keys_file, std::slice::from_ref(&key))?;
        let mut cmd = Command::new("node");
        cmd.arg(peer_dir().join("issuer.mjs"))
            .current_dir(peer_dir())
            .env("TLS_CERT", &tls.cert)
            .env("TLS_KEY", &tls.key)
            .env("KEYS_FILE", &keys_file)
            .env("WEB_REDIRECTS", redirects.join(","))
            .env(
                "MODE",
                match mode {
                    Mode::Real => "",
                    Mode::JunkDiscovery => "junk-discovery",
                    Mode::JunkJwks => "junk-jwks",
                },
            );
        let process = Process::spawn("oidc-issuer", &mut cmd, dir.join("issuer.log"))?;
        let mut url = String::new();
        let ready = wait_until(Duration::from_secs(30), || {
            match process
                .output()
                .lines()
                .find_map(|l| l.strip_prefix("ready "))
            {
                Some(u) => {
                    url = u.trim().to_string();
                    true
                }
                None => false,
            }
        });
        ensure!(ready, "OIDC issuer did not start:\n{}", process.output());
        Ok(Issuer {
            url,
            tls,
            keys_file,
            keys: vec![key],
            dir,
            process,
        })
    }

    pub fn log(&self) -> String {
        self.process.output()
    }

    /// The key the issuer signs with now.
    pub fn current_key(&self) -> &SigningKey {
        &self.keys[0]
    }

    /// A JWT access token for a client_credentials client (`ci-app`, `ci-fork`).
    pub fn client_token(&self, client: &str) -> Result<String> {
        let out = run_ok(
            Command::new("curl")
                .args(["-sS", "--max-time", "10", "--cacert"])
                .arg(&self.tls.ca)
                .args(["-u", &format!("{client}:ci-secret")])
                .args(["-d", "grant_type=client_credentials"])
                .arg(format!("{}/token", self.url)),
        )?;
        let v: Value = serde_json::from_str(&out).with_context(|| format!("token reply: {out}"))?;
        v["access_token"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("no access_token in {out}"))
    }

    /// An ID token through the authorization-code flow, logged in as `user`.
    pub fn id_token(&self, user: &str) -> Result<String> {
        let out = run_ok(
            Command::new("bash")
                .arg(peer_dir().join("get-id-token.sh"))
                .arg(user)
                .env("ISSUER", &self.url)
                .env("CA", &self.tls.ca),
        )?;
        let token = out.trim().to_string();
        ensure!(token.split('.').count() == 3, "not an ID token: {out}");
        Ok(token)
    }

    /// Key rotation: a new key signs from now on, the old one stays published. No restart.
    pub fn rotate(&mut self, kid: &str) -> Result<()> {
        let key = SigningKey::generate(&self.dir, kid)?;
        self.keys.insert(0, key);
        write_keys(&self.keys_file, &self.keys)?;
        let before = self.log().matches("reloaded keys").count();
        self.process.signal(libc::SIGHUP);
        if !wait_until(Duration::from_secs(10), || {
            self.log().matches("reloaded keys").count() > before
        }) {
            bail!("issuer did not reload its keys:\n{}", self.log());
        }
        Ok(())
    }

    /// Claims like the issuer's own tokens, valid now, for forging variants of.
    pub fn claims(&self, audience: &str) -> Value {
        let now = chrono_now();
        serde_json::json!({
            "iss": self.url,
            "sub": "ci-app",
            "aud": audience,
            "iat": now,
            "exp": now + 600,
            "repository": "acme/app",
            "ref": "refs/heads/main",
        })
    }
}

fn write_keys(path: &Path, keys: &[SigningKey]) -> Result<()> {
    let text: String = keys
        .iter()
        .map(|k| format!("{} {}\n", k.kid, k.pem.display()))
        .collect();
    fs::write(path, text)?;
    Ok(())
}

pub fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Accepts TCP connections and never answers (an issuer that hangs). Ends with the test.
pub struct Silent {
    pub url: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Silent {
    pub fn start() -> Result<Silent> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let url = format!("https://{}", listener.local_addr()?);
        listener.set_nonblocking(true)?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((s, _)) = listener.accept() {
                    held.push(s);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Ok(Silent { url, stop })
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
