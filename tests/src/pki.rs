//! Test certificate authorities made with openssl: a CA of the test's own and certificates it
//! issues for the names and addresses a peer serves.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Result;

use crate::run_ok;

const EC: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
];

pub struct TestPki {
    pub ca: PathBuf,
    ca_key: PathBuf,
    dir: PathBuf,
}

impl TestPki {
    /// A new CA under `dir`, its files named after `prefix`.
    pub fn new(dir: &Path, prefix: &str) -> Result<TestPki> {
        let (ca, ca_key) = (
            dir.join(format!("{prefix}-ca.pem")),
            dir.join(format!("{prefix}-ca.key")),
        );
        run_ok(
            Command::new("openssl")
                .args(["req", "-x509"])
                .args(EC)
                .arg("-keyout")
                .arg(&ca_key)
                .arg("-out")
                .arg(&ca)
                .args(["-days", "2", "-subj", "/CN=gateway e2e test CA"]),
        )?;
        Ok(TestPki {
            ca,
            ca_key,
            dir: dir.to_path_buf(),
        })
    }

    /// A certificate and key for `san` (`DNS:api.test,IP:10.1.2.3`); returns (cert, key).
    pub fn issue(&self, name: &str, san: &str) -> Result<(PathBuf, PathBuf)> {
        let (cert, key, csr, ext) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
            self.dir.join(format!("{name}.csr")),
            self.dir.join(format!("{name}.ext")),
        );
        run_ok(
            Command::new("openssl")
                .arg("req")
                .args(EC)
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&csr)
                .args(["-subj", &format!("/CN={name}")]),
        )?;
        fs::write(&ext, format!("subjectAltName={san}\n"))?;
        run_ok(
            Command::new("openssl")
                .args(["x509", "-req", "-in"])
                .arg(&csr)
                .arg("-CA")
                .arg(&self.ca)
                .arg("-CAkey")
                .arg(&self.ca_key)
                .args(["-CAcreateserial", "-days", "2", "-out"])
                .arg(&cert)
                .arg("-extfile")
                .arg(&ext),
        )?;
        Ok((cert, key))
    }
}
