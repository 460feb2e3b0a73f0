//! Certificates made with the `openssl` command at test time: self-signed ones, test CAs and
//! server certificates they issue. EC P-256 keys, valid for a day.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A certificate and its private key, as PEM files.
pub struct Pem {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pem {
    fn new(dir: &Path, name: &str) -> Pem {
        Pem {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        }
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 test path")
}

fn openssl(args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .stderr(Stdio::null())
        .status()
        .expect("the openssl command makes the test certificates");
    assert!(status.success(), "openssl {args:?} failed: {status}");
}

/// `openssl req` making a new P-256 key (into `pem.key`) and a certificate or request
/// (into `out`) for subject `CN=name`.
fn request(pem: &Pem, out: &Path, name: &str, extra: &[&str]) {
    let subject = format!("/CN={name}");
    let mut args = vec!["req", "-subj", &subject, "-nodes", "-sha256"];
    args.extend(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]);
    args.extend(extra);
    args.extend(["-keyout", path(&pem.key), "-out", path(out)]);
    openssl(&args);
}

/// A self-signed end-entity certificate for `sans` (e.g. `DNS:localhost`).
pub fn self_signed(dir: &Path, name: &str, sans: &str) -> Pem {
    let pem = Pem::new(dir, name);
    let san = format!("subjectAltName={sans}");
    request(
        &pem,
        &pem.cert,
        name,
        &[
            "-x509",
            "-days",
            "1",
            "-addext",
            &san,
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ],
    );
    pem
}

/// A CA certificate named `name`, able to sign server certificates.
pub fn ca(dir: &Path, name: &str) -> Pem {
    let pem = Pem::new(dir, &name.replace(' ', "-"));
    request(
        &pem,
        &pem.cert,
        name,
        &[
            "-x509",
            "-days",
            "1",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    pem
}

/// A server certificate for `sans` (e.g. `DNS:localhost,IP:127.0.0.1`), issued by `ca`.
pub fn issued(dir: &Path, ca: &Pem, name: &str, sans: &str) -> Pem {
    let pem = Pem::new(dir, name);
    let csr = dir.join(format!("{name}.csr"));
    request(&pem, &csr, name, &[]);
    let extensions = dir.join(format!("{name}.ext"));
    std::fs::write(
        &extensions,
        format!(
            "subjectAltName={sans}\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        ),
    )
    .expect("write the extensions file");
    openssl(&[
        "x509",
        "-req",
        "-days",
        "1",
        "-sha256",
        "-set_serial",
        "1",
        "-in",
        path(&csr),
        "-CA",
        path(&ca.cert),
        "-CAkey",
        path(&ca.key),
        "-extfile",
        path(&extensions),
        "-out",
        path(&pem.cert),
    ]);
    pem
}
