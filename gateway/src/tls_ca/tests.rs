use std::os::unix::fs::PermissionsExt as _;

use super::*;

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("gw-tls-ca-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_ca_is_created_once_private_and_reused() {
    let s = Scratch::new("reuse");
    let a = Ca::load_or_create(&s.0).unwrap();
    let b = Ca::load_or_create(&s.0).unwrap();
    assert_eq!(a.pem(), b.pem(), "a second load reuses the CA");
    assert!(a.pem().starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(mode(&dir(&s.0)), 0o700);
    assert_eq!(mode(&dir(&s.0).join("ca.key")), 0o600);
    // A leaf issued by the reloaded CA names its issuer's key.
    let leaf = b
        .issue("db", &["db.example".into()], &["10.0.0.5".parse().unwrap()])
        .unwrap();
    assert_eq!(leaf.chain.len(), 2);
    assert_eq!(leaf.chain[1].as_ref(), a.der.as_ref());
}

#[test]
fn a_damaged_ca_is_an_error_never_replaced() {
    let s = Scratch::new("corrupt");
    let original = Ca::load_or_create(&s.0).unwrap().pem().to_string();
    let cert = dir(&s.0).join("ca.pem");
    let key = dir(&s.0).join("ca.key");

    std::fs::write(&cert, "not a certificate\n").unwrap();
    let e = Ca::load_or_create(&s.0).unwrap_err().to_string();
    assert!(
        e.contains("ca.pem") && e.contains("not a PEM certificate"),
        "{e}"
    );
    assert!(!e.contains('\n'), "one line: {e}");
    assert_eq!(
        std::fs::read_to_string(&cert).unwrap(),
        "not a certificate\n"
    );

    std::fs::write(&cert, &original).unwrap();
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let e = Ca::load_or_create(&s.0).unwrap_err().to_string();
    assert!(
        e.contains("ca.key") && e.contains("not a usable private key"),
        "{e}"
    );

    // Another CA's key with this certificate.
    std::fs::write(&key, KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let e = Ca::load_or_create(&s.0).unwrap_err().to_string();
    assert!(e.contains("does not certify the key"), "{e}");

    std::fs::remove_file(&key).unwrap();
    let e = Ca::load_or_create(&s.0).unwrap_err().to_string();
    assert!(e.contains("ca.key") && e.contains("missing"), "{e}");
    assert_eq!(std::fs::read_to_string(&cert).unwrap(), original);
}
