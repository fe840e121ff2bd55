//! Test certificates: a CA and a server certificate it signs, written as PEM files.

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use std::path::{Path, PathBuf};

pub struct Pki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA (written to `dir/NAME-ca.pem`) and a server certificate for `names` signed by it.
pub fn make(dir: &Path, name: &str, names: &[&str]) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} test CA"));
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let pki = Pki {
        ca: dir.join(format!("{name}-ca.pem")),
        cert: dir.join(format!("{name}-cert.pem")),
        key: dir.join(format!("{name}-key.pem")),
    };
    std::fs::write(&pki.ca, ca_cert.pem()).unwrap();
    std::fs::write(&pki.cert, cert.pem()).unwrap();
    std::fs::write(&pki.key, key.serialize_pem()).unwrap();
    pki
}

/// A certificate and its key made by the openssl command line.
pub struct OpensslCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl OpensslCert {
    pub fn cert(&self) -> &str {
        self.cert.to_str().unwrap()
    }
    pub fn key(&self) -> &str {
        self.key.to_str().unwrap()
    }
}

/// The names every openssl certificate here is for.
const SAN: &str = "subjectAltName=DNS:localhost,IP:127.0.0.1";

/// Runs the openssl command line in `dir`; it must succeed.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A new P-256 key for `c` and a certificate request for it with subject `subj`.
fn key_and_request(dir: &Path, c: &OpensslCert, csr: &str, subj: &str) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let out = ["-keyout", c.key(), "-out", csr, "-subj", subj];
    openssl(dir, &[&["req", "-new"][..], &ec, &out].concat());
}

fn paths(dir: &Path, name: &str) -> OpensslCert {
    OpensslCert {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    }
}

/// What people type to make a certificate for a private server (OpenSSL marks the
/// result as a CA): `openssl req -x509 -newkey ec … -subj /CN=localhost -addext …`.
pub fn openssl_self_signed(dir: &Path, name: &str) -> OpensslCert {
    let c = paths(dir, name);
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            c.key(),
            "-out",
            c.cert(),
            "-days",
            "365",
            "-subj",
            "/CN=localhost",
            "-addext",
            SAN,
        ],
    );
    c
}

/// Like [`openssl_self_signed`] (a CA too), but valid only in January 2020: `openssl
/// ca -selfsign` is the command line's way to set both dates.
pub fn openssl_expired(dir: &Path, name: &str) -> OpensslCert {
    let c = paths(dir, name);
    let db = dir.join(format!("{name}-db"));
    std::fs::create_dir_all(&db).unwrap();
    std::fs::write(db.join("index.txt"), "").unwrap();
    std::fs::write(db.join("serial"), "01\n").unwrap();
    let cnf = format!(
        "[ca]\ndefault_ca = d\n[d]\ndatabase = {0}/index.txt\nnew_certs_dir = {0}\n\
         serial = {0}/serial\ndefault_md = sha256\npolicy = p\n[p]\ncommonName = supplied\n",
        db.display()
    );
    std::fs::write(db.join("ca.cnf"), cnf).unwrap();
    std::fs::write(
        db.join("ext.cnf"),
        format!("basicConstraints=critical,CA:TRUE\n{SAN}\n"),
    )
    .unwrap();
    let csr = db.join("req.csr");
    let csr = csr.to_str().unwrap();
    key_and_request(dir, &c, csr, "/CN=localhost");
    let (cnf, ext) = (db.join("ca.cnf"), db.join("ext.cnf"));
    openssl(
        dir,
        &[
            "ca",
            "-batch",
            "-selfsign",
            "-keyfile",
            c.key(),
            "-in",
            csr,
            "-out",
            c.cert(),
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200201000000Z",
            "-config",
            cnf.to_str().unwrap(),
            "-extfile",
            ext.to_str().unwrap(),
        ],
    );
    c
}

/// A certificate marked as a CA and signed by `issuer`: an intermediate CA
/// certificate that a server wrongly presents as its own.
pub fn openssl_ca_signed_by(dir: &Path, name: &str, issuer: &OpensslCert) -> OpensslCert {
    let c = paths(dir, name);
    let ext = dir.join(format!("{name}-ext.cnf"));
    std::fs::write(&ext, format!("basicConstraints=critical,CA:TRUE\n{SAN}\n")).unwrap();
    let csr = dir.join(format!("{name}.csr"));
    let csr = csr.to_str().unwrap();
    key_and_request(dir, &c, csr, "/O=pipe test/CN=localhost");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            issuer.cert(),
            "-CAkey",
            issuer.key(),
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            ext.to_str().unwrap(),
            "-out",
            c.cert(),
        ],
    );
    c
}
