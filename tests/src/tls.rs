//! The certificates of a cluster run with TLS (`ClusterOptions::tls`): a CA made for the
//! cluster, and a certificate per agent, supervisor and the harness itself, each valid for the
//! address its program is reached at. The CA stays in memory, so that a test can issue more
//! certificates from it (an expired one, say) besides the ones a foreign CA makes.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use service::{IssuedCert, LocalCa, Tls, TlsOptions, Validity};

/// How long the certificates of a test cluster are valid: longer than any test.
const LIFETIME: Duration = Duration::from_secs(24 * 3600);

pub struct Pki {
    ca: LocalCa,
    ca_file: PathBuf,
    dir: PathBuf,
}

impl Pki {
    /// Makes the CA and one certificate per `(stem, address)` in `dir`: `ca.pem`, and
    /// `<stem>.pem` with `<stem>-key.pem` (mode 0600).
    pub fn create(dir: &Path, programs: &[(String, Ipv4Addr)]) -> Pki {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let validity = Validity::from_now(LIFETIME).expect("a validity from now");
        let ca = LocalCa::new("rmw e2e cluster CA", validity).expect("make the cluster's CA");
        let ca_file = dir.join("ca.pem");
        write(&ca_file, &ca.cert_pem(), false);
        let pki = Pki { ca, ca_file, dir: dir.to_path_buf() };
        for (stem, ip) in programs {
            let cert = pki.issue(stem, &ip.to_string(), validity);
            pki.write_cert(stem, &cert);
        }
        pki
    }

    /// `ca.pem`: every program's `--tls-ca`.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// A certificate from the cluster's CA for `name` at `address`, valid as `validity` says.
    pub fn issue(&self, name: &str, address: &str, validity: Validity) -> IssuedCert {
        self.ca.issue(name, &[address], validity).unwrap_or_else(|e| panic!("issue a certificate for {name}: {e}"))
    }

    /// A certificate from the cluster's CA that expired an hour ago.
    pub fn issue_expired(&self, name: &str, address: &str) -> IssuedCert {
        let now = SystemTime::now();
        let validity =
            Validity { not_before: now - Duration::from_secs(48 * 3600), not_after: now - Duration::from_secs(3600) };
        self.issue(name, address, validity)
    }

    /// Writes `cert` as `<stem>.pem` and `<stem>-key.pem` beside the others; their paths.
    pub fn write_cert(&self, stem: &str, cert: &IssuedCert) -> (PathBuf, PathBuf) {
        let (cert_file, key_file) = self.files(stem);
        write(&cert_file, &cert.cert_pem, false);
        write(&key_file, &cert.key_pem, true);
        (cert_file, key_file)
    }

    /// `<stem>.pem` and `<stem>-key.pem`: a program's certificate and key (`harness` is the
    /// tests' own, which the programs accept as a client certificate).
    pub fn files(&self, stem: &str) -> (PathBuf, PathBuf) {
        (self.dir.join(format!("{stem}.pem")), self.dir.join(format!("{stem}-key.pem")))
    }

    /// The `--tls-*` flags of the program whose certificate is `<stem>.pem`.
    pub fn args(&self, stem: &str, client_auth: bool) -> Vec<String> {
        let (cert, key) = self.files(stem);
        let mut args = vec![
            "--tls-cert".to_string(),
            cert.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
            "--tls-ca".into(),
            self.ca_file.display().to_string(),
        ];
        if client_auth {
            args.push("--tls-client-auth".into());
        }
        args
    }

    /// The TLS settings of `<stem>.pem`, as a program would load them from its flags.
    pub fn load(&self, stem: &str) -> Tls {
        let (cert, key) = self.files(stem);
        let options =
            TlsOptions { cert: Some(cert), key: Some(key), ca: Some(self.ca_file.clone()), client_auth: false };
        options.load().unwrap_or_else(|e| panic!("load {stem}'s certificate: {e}")).expect("TLS options were given")
    }
}

fn write(path: &Path, text: &str, private: bool) {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    if private {
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
    }
}
