//! `lockstep certs`: a cluster CA, node certificates and client certificates as PEM files,
//! made with rcgen (no openssl needed).
//!
//! Naming scheme (what `lockstepd` checks):
//! - node `N`: subject CN `node-N`, the given host names and IP addresses as subject
//!   alternative names, usable as TLS server and client certificate;
//! - client: subject CN = the actor id, and URI subject alternative names
//!   `lockstep:kind:<human|service|worker>` and `lockstep:role:<name>` (one per role; rcgen
//!   keeps only one OU per subject, so not OU entries, which lockstepd also reads), usable as
//!   TLS client certificate only.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// Certificates for a cluster: created in --out, next to the CA that signs them.
#[derive(Debug, Clone, clap::Args)]
pub struct CertsArgs {
    /// The directory to write PEM files into (created if missing). If it already holds
    /// ca.pem and ca-key.pem, that CA signs the new certificates; otherwise a new CA is made.
    #[arg(long, default_value = "certs")]
    pub out: PathBuf,
    /// A node certificate: ID=HOST[,HOST...] (host names and IP addresses that peers and
    /// clients dial, e.g. 1=n1.example,10.0.0.1). Writes node-ID.pem and node-ID-key.pem.
    /// Repeatable.
    #[arg(long = "node", value_name = "ID=HOSTS")]
    pub nodes: Vec<String>,
    /// A client certificate: ACTOR[:KIND[:ROLE,ROLE...]] with KIND human (default), service or
    /// worker, e.g. alice, bob::approver or erp:worker. Writes client-ACTOR.pem and
    /// client-ACTOR-key.pem. Repeatable.
    #[arg(long = "client", value_name = "ACTOR[:KIND[:ROLES]]")]
    pub clients: Vec<String>,
    /// Validity of the node and client certificates, in days (a new CA gets 10 years).
    #[arg(long, default_value_t = 365)]
    pub days: u32,
}

/// A node certificate to make.
#[derive(Debug, PartialEq, Eq)]
pub struct NodeSpec {
    pub id: u64,
    pub hosts: Vec<String>,
}

/// A client certificate to make.
#[derive(Debug, PartialEq, Eq)]
pub struct ClientSpec {
    pub actor: String,
    pub kind: String,
    pub roles: Vec<String>,
}

pub fn parse_node(text: &str) -> anyhow::Result<NodeSpec> {
    let (id, hosts) = text
        .split_once('=')
        .with_context(|| format!("--node `{text}` is not ID=HOST[,HOST...]"))?;
    let id: u64 = id
        .trim()
        .parse()
        .ok()
        .filter(|id| *id > 0)
        .with_context(|| format!("--node `{text}`: `{id}` is not a positive node id"))?;
    let hosts: Vec<String> = hosts
        .split(',')
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .collect();
    if hosts.is_empty() {
        bail!("--node `{text}` names no host: give the names or addresses peers dial");
    }
    Ok(NodeSpec { id, hosts })
}

pub fn parse_client(text: &str) -> anyhow::Result<ClientSpec> {
    let mut parts = text.splitn(3, ':');
    let actor = parts.next().unwrap_or_default().trim().to_string();
    if actor.is_empty() {
        bail!("--client `{text}` names no actor");
    }
    if actor.starts_with("system:") || node_name(&actor) {
        bail!("--client `{actor}`: ids `system:*` and `node-<number>` are reserved");
    }
    let kind = match parts.next().map(str::trim).unwrap_or("") {
        "" => "human".to_string(),
        k @ ("human" | "service" | "worker") => k.to_string(),
        other => bail!("--client `{text}`: kind `{other}` is not human, service or worker"),
    };
    let roles = parts
        .next()
        .unwrap_or("")
        .split(',')
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
        .collect();
    Ok(ClientSpec { actor, kind, roles })
}

fn node_name(text: &str) -> bool {
    text.strip_prefix("node-")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// A file-name-safe form of an actor id.
fn file_stem(actor: &str) -> String {
    actor
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The UTC date `days` from today, as rcgen wants it.
fn date_in(days: i64) -> anyhow::Result<(i32, u8, u8)> {
    let at = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_hours(24 * days))
        .context("date out of range")?;
    let date = jiff::tz::Offset::UTC.to_datetime(at).date();
    Ok((i32::from(date.year()), date.month() as u8, date.day() as u8))
}

/// Sets a certificate's validity from yesterday (tolerating clock skew) to `days` from now.
fn validity(params: &mut CertificateParams, days: i64) -> anyhow::Result<()> {
    let (y, m, d) = date_in(-1)?;
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = date_in(days)?;
    params.not_after = rcgen::date_time_ymd(y, m, d);
    Ok(())
}

fn write(path: &Path, text: &str, secret: bool) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {}", path.display()))?;
    }
    Ok(())
}

/// The CA in `dir`, made if missing. Returns the issuer and whether it is new.
fn ca(dir: &Path) -> anyhow::Result<(Issuer<'static, KeyPair>, bool)> {
    let cert_path = dir.join("ca.pem");
    let key_path = dir.join("ca-key.pem");
    if cert_path.exists() || key_path.exists() {
        let cert = std::fs::read_to_string(&cert_path)
            .with_context(|| format!("cannot read {}", cert_path.display()))?;
        let key = std::fs::read_to_string(&key_path)
            .with_context(|| format!("cannot read {}", key_path.display()))?;
        let key = KeyPair::from_pem(&key)
            .with_context(|| format!("{} is not a PEM private key", key_path.display()))?;
        let issuer = Issuer::from_ca_cert_pem(&cert, key)
            .with_context(|| format!("{} is not a PEM certificate", cert_path.display()))?;
        return Ok((issuer, false));
    }
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "Lockstep cluster CA");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Lockstep");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, 3650)?;
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write(&cert_path, &cert.pem(), false)?;
    write(&key_path, &key.serialize_pem(), true)?;
    Ok((Issuer::new(params, key), true))
}

fn leaf_params(days: u32, cn: &str) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, cn);
    validity(&mut params, i64::from(days.max(1)))?;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    Ok(params)
}

/// Makes what `args` asks for; returns the files written.
pub fn run(args: &CertsArgs) -> anyhow::Result<Vec<PathBuf>> {
    let nodes: Vec<NodeSpec> = args
        .nodes
        .iter()
        .map(String::as_str)
        .map(parse_node)
        .collect::<anyhow::Result<_>>()?;
    let clients: Vec<ClientSpec> = args
        .clients
        .iter()
        .map(String::as_str)
        .map(parse_client)
        .collect::<anyhow::Result<_>>()?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let (issuer, new) = ca(&args.out)?;
    let mut written = Vec::new();
    if new {
        written.push(args.out.join("ca.pem"));
        written.push(args.out.join("ca-key.pem"));
    }
    for node in &nodes {
        let mut params = leaf_params(args.days, &format!("node-{}", node.id))?;
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, "node");
        params.subject_alt_names = node
            .hosts
            .iter()
            .map(|h| match h.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(h.clone().try_into().with_context(
                    || format!("--node {}: `{h}` is not a host name", node.id),
                )?)),
            })
            .collect::<anyhow::Result<_>>()?;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        let cert_path = args.out.join(format!("node-{}.pem", node.id));
        let key_path = args.out.join(format!("node-{}-key.pem", node.id));
        write(&cert_path, &cert.pem(), false)?;
        write(&key_path, &key.serialize_pem(), true)?;
        written.extend([cert_path, key_path]);
    }
    for client in &clients {
        let mut params = leaf_params(args.days, &client.actor)?;
        let uri = |text: String| -> anyhow::Result<SanType> {
            Ok(SanType::URI(text.clone().try_into().with_context(
                || format!("--client {}: `{text}` is not ASCII", client.actor),
            )?))
        };
        params.subject_alt_names = std::iter::once(format!("lockstep:kind:{}", client.kind))
            .chain(client.roles.iter().map(|r| format!("lockstep:role:{r}")))
            .map(uri)
            .collect::<anyhow::Result<_>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        let stem = file_stem(&client.actor);
        let cert_path = args.out.join(format!("client-{stem}.pem"));
        let key_path = args.out.join(format!("client-{stem}-key.pem"));
        write(&cert_path, &cert.pem(), false)?;
        write(&key_path, &key.serialize_pem(), true)?;
        written.extend([cert_path, key_path]);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_with_clear_errors() {
        assert_eq!(
            parse_node("2=n2.example, 10.0.0.2").unwrap(),
            NodeSpec {
                id: 2,
                hosts: vec!["n2.example".into(), "10.0.0.2".into()]
            }
        );
        assert!(parse_node("0=x").is_err());
        assert!(parse_node("1=").is_err());
        assert!(parse_node("n1").is_err());
        assert_eq!(
            parse_client("bob::approver,director").unwrap(),
            ClientSpec {
                actor: "bob".into(),
                kind: "human".into(),
                roles: vec!["approver".into(), "director".into()]
            }
        );
        assert_eq!(parse_client("erp:worker").unwrap().kind, "worker");
        assert!(parse_client("x:robot").is_err());
        assert!(parse_client("node-3").is_err());
        assert!(parse_client("system:sla").is_err());
        assert!(parse_client("node-x").is_ok());
    }

    #[test]
    fn makes_a_ca_once_and_signs_nodes_and_clients_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("certs");
        let args = CertsArgs {
            out: out.clone(),
            nodes: vec!["1=127.0.0.1,localhost".into()],
            clients: vec!["alice:human:requester".into()],
            days: 30,
        };
        let written = run(&args).unwrap();
        assert_eq!(written.len(), 6, "{written:?}");
        let ca = std::fs::read_to_string(out.join("ca.pem")).unwrap();
        let node = std::fs::read_to_string(out.join("node-1.pem")).unwrap();
        assert!(node.starts_with("-----BEGIN CERTIFICATE-----"));
        let key = std::fs::read_to_string(out.join("node-1-key.pem")).unwrap();
        assert!(key.contains("PRIVATE KEY"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("client-alice-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // The node certificate names the node and its hosts; the client's names its kind and
        // roles.
        let parse = |pem: &str| {
            let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
            block.contents
        };
        let der = parse(&node);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let cn: Vec<&str> = cert
            .subject()
            .iter_common_name()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(cn, vec!["node-1"]);
        let sans = format!(
            "{:?}",
            cert.subject_alternative_name().unwrap().unwrap().value
        );
        assert!(
            sans.contains("127.0.0.1") || sans.contains("[127, 0, 0, 1]"),
            "{sans}"
        );
        assert!(sans.contains("localhost"), "{sans}");
        let client = std::fs::read_to_string(out.join("client-alice.pem")).unwrap();
        let der = parse(&client);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let sans = format!(
            "{:?}",
            cert.subject_alternative_name().unwrap().unwrap().value
        );
        assert!(sans.contains("lockstep:kind:human"), "{sans}");
        assert!(sans.contains("lockstep:role:requester"), "{sans}");
        // A second run reuses the CA.
        let again = CertsArgs {
            out: out.clone(),
            nodes: vec!["2=127.0.0.1".into()],
            clients: vec![],
            days: 30,
        };
        assert_eq!(run(&again).unwrap().len(), 2);
        assert_eq!(std::fs::read_to_string(out.join("ca.pem")).unwrap(), ca);
    }
}
