//! Test infrastructure: a certificate authority and a JWT issuer made with rcgen for one test
//! or chaos run, with the PEM files a secure cluster (`lockstepd` without `--dev`) needs.
//! Shared by the server's cluster tests and the chaos suite's secure schedules.

use std::path::PathBuf;

use lockstep_client::{Identity, Tls};

/// The `iss` and `aud` of the tokens a secure test cluster accepts.
pub const JWT_ISSUER: &str = "https://issuer.lockstep.test";
pub const JWT_AUDIENCE: &str = "lockstep-test";

/// A CA and a JWT signing key made with rcgen for one test, with the PEM files a secure
/// cluster needs in `dir`.
pub struct Pki {
    pub dir: PathBuf,
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub ca_pem: String,
    jwt_key: rcgen::KeyPair,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Pki {
    pub fn new(dir: PathBuf) -> Pki {
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let ca_pem = params.self_signed(&key).unwrap().pem();
        std::fs::write(dir.join("ca.pem"), &ca_pem).unwrap();
        let jwt_key = rcgen::KeyPair::generate().unwrap();
        std::fs::write(dir.join("jwt.pem"), jwt_key.public_key_pem()).unwrap();
        Pki {
            dir,
            ca: rcgen::Issuer::new(params, key),
            ca_pem,
            jwt_key,
        }
    }

    /// A certificate from this CA for `cn` (with `kind:…`/`role:…` entries), written as `<file>.pem` and
    /// `<file>-key.pem`; returns the PEM texts (certificate, key).
    pub fn issue(&self, file: &str, cn: &str, ous: &[&str], server: bool) -> (String, String) {
        let names = if server {
            vec!["127.0.0.1".to_string(), "localhost".to_string()]
        } else {
            Vec::new()
        };
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        // Kind and roles as URI SANs (`lockstep:kind:…`, `lockstep:role:…`), as `lockstep
        // certs` writes them: rcgen keeps one OU per subject.
        for entry in ous {
            params.subject_alt_names.push(rcgen::SanType::URI(
                format!("lockstep:{entry}").try_into().unwrap(),
            ));
        }
        params.extended_key_usages = if server {
            vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ]
        } else {
            vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth]
        };
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap().pem();
        let key = key.serialize_pem();
        std::fs::write(self.dir.join(format!("{file}.pem")), &cert).unwrap();
        std::fs::write(self.dir.join(format!("{file}-key.pem")), &key).unwrap();
        (cert, key)
    }

    /// The certificate and key files of node `id` (made on first use).
    pub fn node_files(&self, id: u64) -> (PathBuf, PathBuf) {
        let cert = self.dir.join(format!("node-{id}.pem"));
        if !cert.exists() {
            self.issue(&format!("node-{id}"), &format!("node-{id}"), &[], true);
        }
        (cert, self.dir.join(format!("node-{id}-key.pem")))
    }

    /// The arguments that make `lockstepd` node `id` secure with this PKI: its certificate and
    /// key, the CA, and the JWT issuer (keys, issuer, audience).
    pub fn node_args(&self, id: u64) -> Vec<String> {
        let (cert, key) = self.node_files(id);
        let path = |p: PathBuf| p.display().to_string();
        vec![
            "--tls-cert".into(),
            path(cert),
            "--tls-key".into(),
            path(key),
            "--tls-ca".into(),
            path(self.dir.join("ca.pem")),
            "--jwt-keys".into(),
            path(self.dir.join("jwt.pem")),
            "--jwt-issuer".into(),
            JWT_ISSUER.into(),
            "--jwt-audience".into(),
            JWT_AUDIENCE.into(),
        ]
    }

    /// A token signed by the cluster's issuer key with these claims.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        sign_with(&self.jwt_key, claims)
    }

    /// The claims of a valid token for `identity`, expiring in `exp_in` seconds.
    pub fn claims(identity: &Identity, exp_in: i64) -> serde_json::Value {
        let now = jiff::Timestamp::now().as_second();
        serde_json::json!({
            "sub": identity.actor,
            "roles": identity.roles,
            "lockstep_kind": identity.kind.as_str(),
            "iss": JWT_ISSUER,
            "aud": JWT_AUDIENCE,
            "iat": now,
            "exp": now + exp_in,
        })
    }

    pub fn token(&self, identity: &Identity) -> String {
        self.sign(&Pki::claims(identity, 600))
    }

    /// Client TLS settings: the CA, and optionally a client certificate.
    pub fn tls(&self, identity: Option<(String, String)>) -> Tls {
        Tls {
            ca_pem: self.ca_pem.clone().into_bytes(),
            identity: identity.map(|(c, k)| (c.into_bytes(), k.into_bytes())),
            domain: None,
        }
    }
}

/// A JWT (ES256) signed with `key`.
pub fn sign_with(key: &rcgen::KeyPair, claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap()
}
