//! The web console over real sockets against a real 3-node cluster: pages go through the
//! API's trust (sign-in, `allow`, read rules, the security log), forms need their CSRF token
//! and change nothing without it, values from instance data are escaped, every response
//! carries a Content-Security-Policy, and the live feed reports changes the actor may read.
//! The browser test (tests/console/test_console.py) drives the same pages in Chromium.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{Cluster, Settings, alice, bob};
use lockstep_client::{Identity, by_id, pb, request_id};
use lockstep_core::ActorKind;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const WORKFLOW: &str = "purchase-order";

/// An HTTP/1.1 client with a cookie jar, plain or over TLS with the test CA.
struct Browser {
    addr: String,
    tls: Option<tokio_rustls::TlsConnector>,
    cookies: BTreeMap<String, String>,
    /// Sent as `Authorization` (as an SSO proxy would).
    authorization: Option<String>,
}

struct Page {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Page {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The value of the first `<input name="csrf" value="…">` on the page.
    fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf\" value=\"")
            .unwrap_or_else(|| panic!("no CSRF field on the page:\n{}", self.body));
        let rest = &self.body[at + "name=\"csrf\" value=\"".len()..];
        rest[..rest.find('"').unwrap()].to_string()
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

impl Browser {
    fn new(cluster: &Cluster, node: usize) -> Browser {
        Browser::with_certificate(cluster, node, None)
    }

    /// A browser presenting a client certificate (PEM certificate and key) on a secure node.
    fn with_certificate(
        cluster: &Cluster,
        node: usize,
        identity: Option<(String, String)>,
    ) -> Browser {
        let tls = cluster.pki.as_ref().map(|pki| {
            let mut roots = tokio_rustls::rustls::RootCertStore::empty();
            let ca = std::fs::read(pki.dir.join("ca.pem")).unwrap();
            use tokio_rustls::rustls::pki_types::pem::PemObject;
            for cert in tokio_rustls::rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
                roots.add(cert.unwrap()).unwrap();
            }
            let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
                tokio_rustls::rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
            let config = match &identity {
                None => config.with_no_client_auth(),
                Some((cert, key)) => {
                    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
                    let certs = CertificateDer::pem_slice_iter(cert.as_bytes())
                        .collect::<Result<Vec<_>, _>>()
                        .unwrap();
                    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
                    config.with_client_auth_cert(certs, key).unwrap()
                }
            };
            tokio_rustls::TlsConnector::from(Arc::new(config))
        });
        Browser {
            addr: format!("127.0.0.1:{}", cluster.console_ports[node]),
            tls,
            cookies: BTreeMap::new(),
            authorization: None,
        }
    }

    async fn connect(&self) -> Box<dyn Stream> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let tcp = loop {
            match tokio::net::TcpStream::connect(&self.addr).await {
                Ok(s) => break s,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("connect to the console at {}: {e}", self.addr),
            }
        };
        match &self.tls {
            None => Box::new(tcp),
            Some(connector) => {
                let name = tokio_rustls::rustls::pki_types::ServerName::IpAddress(
                    std::net::Ipv4Addr::LOCALHOST.into(),
                );
                Box::new(connector.connect(name, tcp).await.expect("TLS handshake"))
            }
        }
    }

    fn request_head(&self, method: &str, path: &str, extra: &str) -> String {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: text/html\r\n",
            self.addr
        );
        if !self.cookies.is_empty() {
            let jar: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            head.push_str(&format!("Cookie: {}\r\n", jar.join("; ")));
        }
        if let Some(a) = &self.authorization {
            head.push_str(&format!("Authorization: {a}\r\n"));
        }
        head.push_str(extra);
        head
    }

    async fn send(&mut self, head: String, body: &str) -> Page {
        let mut stream = self.connect().await;
        stream
            .write_all(format!("{head}\r\n{body}").as_bytes())
            .await
            .unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
            .await
            .expect("the console answers within 30 s")
            .ok();
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("not an HTTP response: {text}"));
        let mut lines = head.lines();
        let status: u16 = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        let chunked = headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
        let body = if chunked {
            dechunk(body)
        } else {
            body.to_string()
        };
        for (name, value) in &headers {
            if name.eq_ignore_ascii_case("set-cookie") {
                let pair = value.split(';').next().unwrap();
                let (k, v) = pair.split_once('=').unwrap();
                if v.is_empty() || value.contains("Max-Age=0") {
                    self.cookies.remove(k);
                } else {
                    self.cookies.insert(k.to_string(), v.to_string());
                }
            }
        }
        Page {
            status,
            headers,
            body,
        }
    }

    async fn get(&mut self, path: &str) -> Page {
        let head = self.request_head("GET", path, "");
        self.send(head, "").await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let body: Vec<String> = form
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        let body = body.join("&");
        let head = self.request_head(
            "POST",
            path,
            &format!(
                "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
                body.len()
            ),
        );
        self.send(head, &body).await
    }

    /// Signs in on a development node as `identity` through the sign-in form.
    async fn sign_in_dev(&mut self, identity: &Identity) {
        let form = self.get("/signin").await;
        assert_eq!(form.status, 200, "{}", form.body);
        let csrf = form.csrf();
        let roles = identity.roles.join(",");
        let done = self
            .post(
                "/signin",
                &[
                    ("csrf", &csrf),
                    ("id", &identity.actor),
                    ("roles", &roles),
                    ("kind", identity.kind.as_str()),
                ],
            )
            .await;
        assert_eq!(done.status, 303, "{}", done.body);
        assert!(self.cookies.contains_key("lockstep_actor"));
    }
}

fn encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n.min(tail.len())]);
        rest = tail.get(n + 2..).unwrap_or("");
    }
    out
}

fn po(note: &str) -> serde_json::Value {
    serde_json::json!({"amount": 120, "requester": "alice", "note": note})
}

async fn state_of(cluster: &Cluster, id: &str) -> (String, u64) {
    let i = cluster
        .admin()
        .get(by_id(id), pb::ReadConsistency::Linearizable)
        .await
        .unwrap()
        .instance;
    (i.state, i.version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_escape_data_carry_a_csp_and_forms_need_their_csrf_token() {
    let cluster = Cluster::start(Settings {
        console: true,
        ..Settings::default()
    });
    cluster.leader().await;
    cluster.define_po().await;
    let alice_client = cluster.client(alice());
    let created = alice_client
        .create(
            &request_id(),
            WORKFLOW,
            Some("PO-X"),
            &po("<script>alert('x')</script>"),
        )
        .await
        .unwrap();
    let id = created.instance_id;

    // No one signed in: the pages send the browser to the sign-in form.
    let mut anonymous = Browser::new(&cluster, 1);
    let page = anonymous.get("/inbox").await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(page.header("location"), Some("/signin"));

    let mut browser = Browser::new(&cluster, 1);
    browser.sign_in_dev(&alice()).await;
    let page = browser.get(&format!("/instances/{id}")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        !page.body.contains("<script>alert"),
        "instance data went into the page unescaped"
    );
    assert!(page.body.contains("&lt;script&gt;alert("), "{}", page.body);
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    // The state machine is drawn, with alice's one move offered.
    assert!(page.body.contains("<svg"), "no graph");
    assert!(page.body.contains("id=\"take-submit\""), "no submit form");
    let csrf = page.csrf();

    // A form without the browser's CSRF token is refused and changes nothing.
    let before = state_of(&cluster, &id).await;
    let forged = browser
        .post(
            &format!("/instances/{id}/transition"),
            &[
                ("csrf", "0123456789abcdef0123456789abcdef"),
                ("transition", "submit"),
                ("payload", "{}"),
            ],
        )
        .await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert!(forged.body.contains("CSRF"), "{}", forged.body);
    assert_eq!(state_of(&cluster, &id).await, before);

    // With it, the transition is taken and the browser is sent back to the instance.
    let taken = browser
        .post(
            &format!("/instances/{id}/transition"),
            &[
                ("csrf", &csrf),
                ("transition", "submit"),
                ("payload", "{}"),
                ("expected_version", &before.1.to_string()),
            ],
        )
        .await;
    assert_eq!(taken.status, 303, "{}", taken.body);
    assert_eq!(state_of(&cluster, &id).await.0, "submitted");

    // Malformed JSON is refused with the line and column, and changes nothing.
    let bad = browser
        .post(
            "/workflows/purchase-order/instances",
            &[("csrf", &csrf), ("data", "{\"amount\": ")],
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(
        bad.body.contains("not valid JSON at line 1"),
        "{}",
        bad.body
    );

    // Assets are embedded and served with their types.
    let js = browser.get("/assets/console.js").await;
    assert_eq!(js.status, 200);
    assert!(
        js.header("content-type")
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(js.body.contains("EventSource"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_go_through_allow_and_a_refusal_shows_its_code() {
    let cluster = Cluster::start(Settings {
        console: true,
        ..Settings::default()
    });
    cluster.leader().await;
    cluster.define_po().await;
    // The list counts are kept from log format 4, which the gate raises once the nodes are up
    // (straight from 1 to the current format: group commit on means format 5).
    cluster.wait_for_group_commit(Duration::from_secs(30)).await;
    let alice_client = cluster.client(alice());
    let id = alice_client
        .create(&request_id(), WORKFLOW, Some("PO-7"), &po("printer paper"))
        .await
        .unwrap()
        .instance_id;
    alice_client
        .transition(
            &request_id(),
            by_id(&id),
            "submit",
            &serde_json::json!({}),
            None,
        )
        .await
        .unwrap();

    // Bob, an approver, finds it in his inbox, with approve among his moves.
    let mut approver = Browser::new(&cluster, 0);
    approver.sign_in_dev(&bob()).await;
    let inbox = approver.get("/inbox").await;
    assert_eq!(inbox.status, 200, "{}", inbox.body);
    assert!(inbox.body.contains("PO-7"), "{}", inbox.body);
    assert!(
        inbox
            .body
            .contains(&format!("/instances/{id}#take-approve")),
        "{}",
        inbox.body
    );

    // Mallory, without the role, attempts approve: the engine refuses, the page says why,
    // and nothing changes.
    let mallory = Identity::new("mallory", ActorKind::Human, &["intern"]);
    let mut intruder = Browser::new(&cluster, 2);
    intruder.sign_in_dev(&mallory).await;
    let page = intruder.get(&format!("/instances/{id}")).await;
    assert!(
        !page.body.contains("id=\"take-approve\""),
        "approve offered to mallory"
    );
    let csrf = page.csrf();
    let refused = intruder
        .post(
            &format!("/instances/{id}/transition"),
            &[
                ("csrf", &csrf),
                ("transition", "approve"),
                ("payload", "{}"),
            ],
        )
        .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body.contains("FORBIDDEN"), "{}", refused.body);
    assert_eq!(state_of(&cluster, &id).await.0, "submitted");

    // Bob approves.
    let page = approver.get(&format!("/instances/{id}")).await;
    let csrf = page.csrf();
    let approved = approver
        .post(
            &format!("/instances/{id}/transition"),
            &[
                ("csrf", &csrf),
                ("transition", "approve"),
                ("payload", "{}"),
            ],
        )
        .await;
    assert_eq!(approved.status, 303, "{}", approved.body);
    assert_eq!(state_of(&cluster, &id).await.0, "approved");

    // The timeline names who did what; the other pages answer.
    let page = approver.get(&format!("/instances/{id}")).await;
    assert!(
        page.body.contains("approve") && page.body.contains("bob"),
        "{}",
        page.body
    );
    // The cluster page shows every member as it sees itself, digests on request.
    let members = approver.get("/cluster?digests=1").await;
    assert_eq!(members.status, 200, "{}", members.body);
    assert_eq!(
        members.body.matches("<td>ok, ").count(),
        3,
        "{}",
        members.body
    );
    assert_eq!(
        members.body.matches("<td>Leader</td>").count(),
        1,
        "{}",
        members.body
    );
    // The list finds an order by its business key, and counts what it shows.
    let found = approver
        .get("/instances?workflow=purchase-order&key=PO-7")
        .await;
    assert!(
        found.body.contains(&id) && found.body.contains("1 match"),
        "{}",
        found.body
    );
    let none = approver
        .get("/instances?workflow=purchase-order&key=PO-NONE")
        .await;
    assert!(none.body.contains("0 match"), "{}", none.body);
    let all = approver.get("/instances?workflow=purchase-order").await;
    assert!(all.body.contains("1 match"), "{}", all.body);
    // The audit page shows every node's chain head, and on request its verification.
    let heads = approver.get("/audit").await;
    assert_eq!(heads.status, 200, "{}", heads.body);
    assert_eq!(
        heads.body.matches("<td>head only</td>").count(),
        3,
        "{}",
        heads.body
    );
    let audit = approver.get("/audit?verify=1").await;
    assert_eq!(audit.status, 200, "{}", audit.body);
    assert_eq!(
        audit.body.matches("<td>verified</td>").count(),
        3,
        "{}",
        audit.body
    );
    assert_eq!(approver.get("/workflows/purchase-order").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_feed_reports_changes_and_resumes_after_the_last_event() {
    let cluster = Cluster::start(Settings {
        console: true,
        ..Settings::default()
    });
    cluster.leader().await;
    cluster.define_po().await;
    let alice_client = cluster.client(alice());
    let id = alice_client
        .create(&request_id(), WORKFLOW, None, &po("live"))
        .await
        .unwrap()
        .instance_id;

    let mut browser = Browser::new(&cluster, 0);
    browser.sign_in_dev(&bob()).await;
    let mut stream = browser.connect().await;
    let head = browser.request_head(
        "GET",
        &format!("/events?instance={id}"),
        "Accept: text/event-stream\r\n",
    );
    stream
        .write_all(format!("{head}\r\n").as_bytes())
        .await
        .unwrap();
    alice_client
        .transition(
            &request_id(),
            by_id(&id),
            "submit",
            &serde_json::json!({}),
            None,
        )
        .await
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the feed closed: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            if seen.contains("event: change") && seen.contains("\"to\":\"submitted\"") {
                return;
            }
        }
    })
    .await;
    assert!(found.is_ok(), "no change event within 20 s:\n{seen}");
    assert!(seen.contains("text/event-stream"), "{seen}");
    let seq: u64 = seen
        .lines()
        .find_map(|l| l.strip_prefix("id: ").or_else(|| l.strip_prefix("id:")))
        .and_then(|v| v.trim().parse().ok())
        .expect("the event has an id");

    // A reconnect with Last-Event-ID one before that record gets it again.
    let mut again = browser.connect().await;
    let head = browser.request_head(
        "GET",
        &format!("/events?instance={id}"),
        &format!(
            "Accept: text/event-stream\r\nLast-Event-ID: {}\r\n",
            seq - 1
        ),
    );
    again
        .write_all(format!("{head}\r\n").as_bytes())
        .await
        .unwrap();
    let mut seen = String::new();
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let n = again.read(&mut buf).await.unwrap();
            assert!(n > 0, "the feed closed: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            if seen.contains(&format!("\"seq\":{seq}")) {
                return;
            }
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "the resumed feed did not repeat #{seq}:\n{seen}"
    );
}

/// A workflow without a read rule: anyone may read its instances.
const NOTES: &str = "workflow: notes\ndata: { type: object }\nstates:\n  open: { initial: true }\n  done: { terminal: true }\ntransitions:\n  close: { from: open, to: done, allow: \"true\" }\n";

/// Only requesters and approvers may read purchase orders.
const READ_POLICY: &str = r#"
[read_instances.purchase-order]
roles = ["requester", "approver"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_consoles_take_tokens_and_honour_read_rules() {
    let cluster = Cluster::start_secure(
        Settings {
            console: true,
            ..Settings::default()
        },
        Some(READ_POLICY),
    );
    cluster.leader().await;
    cluster.define_po().await;
    let pki = cluster.pki.as_ref().unwrap();
    let id = cluster
        .client(alice())
        .create(&request_id(), WORKFLOW, None, &po("secure"))
        .await
        .unwrap()
        .instance_id;

    // Behind an SSO proxy: the bearer token in Authorization.
    let mut proxied = Browser::new(&cluster, 0);
    proxied.authorization = Some(format!("Bearer {}", pki.token(&bob())));
    let page = proxied.get(&format!("/instances/{id}")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("bob"),
        "the header names who is signed in"
    );

    // The sign-in form keeps a token in an HttpOnly, Secure, SameSite=Strict cookie.
    let mut browser = Browser::new(&cluster, 1);
    let form = browser.get("/signin").await;
    let csrf = form.csrf();
    let bad = browser
        .post("/signin", &[("csrf", &csrf), ("token", "not-a-token")])
        .await;
    assert_eq!(bad.status, 200);
    assert!(
        bad.body.contains("UNAUTHENTICATED") || bad.body.contains("refusal"),
        "{}",
        bad.body
    );
    assert!(!browser.cookies.contains_key("lockstep_token"));
    let mallory = Identity::new("mallory", ActorKind::Human, &["intern"]);
    let token = pki.token(&mallory);
    let done = browser
        .post("/signin", &[("csrf", &csrf), ("token", &token)])
        .await;
    assert_eq!(done.status, 303, "{}", done.body);
    let set = done
        .headers
        .iter()
        .find(|(n, v)| n.eq_ignore_ascii_case("set-cookie") && v.starts_with("lockstep_token="))
        .map(|(_, v)| v.clone())
        .expect("the token cookie");
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict"] {
        assert!(set.contains(attribute), "{set}");
    }

    // Mallory may not read purchase orders: the page refuses, and the refusal is logged.
    let page = browser.get(&format!("/instances/{id}")).await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(
        page.body.contains("read_instances of workflow"),
        "{}",
        page.body
    );
    // Node 2's console served it: the refusal is in node 2's security log.
    let log = cluster.admin().security_log_of(1, 0, 1000).await.unwrap();
    assert!(
        log.events
            .iter()
            .any(|e| e.actor.as_deref() == Some("mallory") && e.reason.contains("read_instances")),
        "no security-log record of the refused read"
    );
    // Her live feed carries changes of workflows she may read, and none of purchase orders.
    cluster
        .admin()
        .apply_definition(&request_id(), NOTES, Default::default())
        .await
        .unwrap();
    let mut feed = browser.connect().await;
    let head = browser.request_head("GET", "/events", "Accept: text/event-stream\r\n");
    feed.write_all(format!("{head}\r\n").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster
        .client(alice())
        .transition(
            &request_id(),
            by_id(&id),
            "submit",
            &serde_json::json!({}),
            None,
        )
        .await
        .unwrap();
    let note = cluster
        .client(alice())
        .create(&request_id(), "notes", None, &serde_json::json!({}))
        .await
        .unwrap()
        .instance_id;
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let arrived = tokio::time::timeout(Duration::from_secs(20), async {
        while !seen.contains(&format!("\"instance\":\"{note}\"")) {
            let n = feed.read(&mut buf).await.unwrap();
            assert!(n > 0, "the feed closed: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
    .await;
    assert!(
        arrived.is_ok(),
        "the readable change did not arrive:\n{seen}"
    );
    assert!(
        !seen.contains(&format!("\"instance\":\"{id}\"")),
        "the feed carried a purchase order to an actor who may not read them:\n{seen}"
    );

    // Her inbox leaves out what she may not read instead of failing.
    let inbox = browser.get("/inbox").await;
    assert_eq!(inbox.status, 200, "{}", inbox.body);
    assert!(!inbox.body.contains(&id));

    // A client certificate from the cluster CA signs its holder in, with its roles.
    let carol = pki.issue("client-carol", "carol", &["role:approver"], false);
    let mut certified = Browser::with_certificate(&cluster, 2, Some(carol));
    let inbox = certified.get("/inbox").await;
    assert_eq!(inbox.status, 200, "{}", inbox.body);
    assert!(inbox.body.contains("carol · approver"), "{}", inbox.body);
    let page = certified.get(&format!("/instances/{id}")).await;
    assert_eq!(
        page.status, 200,
        "an approver may read purchase orders: {}",
        page.body
    );
}

/// `bill` opens an incident once its one attempt fails (no `on_exhausted`).
const BILLING: &str = r#"
workflow: billing
data: { type: object }
states:
  open: { initial: true }
  billing: {}
  billed: { terminal: true }
transitions:
  bill:
    from: open
    to: billing
    allow: "true"
    effects:
      - task:
          queue: console-billing
          type: bill
          timeout: 5s
          retry: { max_attempts: 1, backoff: fixed, initial: 100ms }
          on_complete: billed
  billed: { from: billing, to: billed, allow: "actor.kind == 'worker'" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_retries_an_incident_from_the_console() {
    let cluster = Cluster::start(Settings {
        console: true,
        ..Settings::default()
    });
    cluster.leader().await;
    cluster
        .admin()
        .apply_definition(&request_id(), BILLING, Default::default())
        .await
        .unwrap();
    let alice_client = cluster.client(alice());
    let id = alice_client
        .create(&request_id(), "billing", None, &serde_json::json!({}))
        .await
        .unwrap()
        .instance_id;
    alice_client
        .transition(
            &request_id(),
            by_id(&id),
            "bill",
            &serde_json::json!({}),
            None,
        )
        .await
        .unwrap();
    let worker = cluster.client(Identity::new("erp", ActorKind::Worker, &[]));
    let tasks = worker
        .poll_tasks("console-billing", 1, Duration::from_secs(10))
        .await
        .unwrap();
    worker
        .fail_task(&request_id(), &tasks[0].lease, "ledger locked", true)
        .await
        .unwrap();

    // The operator sees the open incident with its reason and retries the task.
    let mut operator = Browser::new(&cluster, 0);
    operator
        .sign_in_dev(&Identity::new("olga", ActorKind::Human, &["operator"]))
        .await;
    let page = operator.get(&format!("/instances/{id}")).await;
    assert!(page.body.contains("ledger locked"), "{}", page.body);
    assert!(page.body.contains("Retry the task"), "{}", page.body);
    let incident = cluster
        .admin()
        .get(by_id(&id), pb::ReadConsistency::Linearizable)
        .await
        .unwrap()
        .instance
        .incidents[0]
        .id
        .clone();
    let csrf = page.csrf();
    let retried = operator
        .post(
            &format!("/instances/{id}/resolve"),
            &[("csrf", &csrf), ("incident", &incident), ("retry", "1")],
        )
        .await;
    assert_eq!(retried.status, 303, "{}", retried.body);
    let after = cluster
        .admin()
        .get(by_id(&id), pb::ReadConsistency::Linearizable)
        .await
        .unwrap()
        .instance;
    assert!(after.incidents[0].resolved_at.is_some(), "{after:?}");
    // The task is ready again: a worker leases it.
    let again = worker
        .poll_tasks("console-billing", 1, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(again.len(), 1, "the retried task is leased again");
}

#[test]
fn a_console_address_that_cannot_be_used_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let start = |console: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lockstepd"))
            .args(["--id", "1", "--listen", "127.0.0.1:7198", "--dev"])
            .args(["--console-listen", console])
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = start("127.0.0.1:7198");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--console-listen (127.0.0.1:7198) is already the gRPC --listen address"),
        "{stderr}"
    );
    let (code, stderr) = start("0.0.0.0:7197");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("serves its console on loopback only"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_subscriptions_show_their_state_and_are_paused_and_resumed_from_the_console() {
    let settings = tempfile::tempdir().unwrap();
    let file = settings.path().join("webhooks.toml");
    std::fs::write(
        &file,
        "allow = [\"127.0.0.1/32\"]\n[secrets]\nops = \"ops-secret-of-enough-bytes\"\n",
    )
    .unwrap();
    let cluster = Cluster::start(Settings {
        console: true,
        node_args: vec!["--webhooks".into(), file.display().to_string()],
        ..Settings::default()
    });
    cluster.leader().await;
    let admin = cluster.admin();
    // Nothing listens there: delivery has nothing to do until a record is written.
    let url = format!(
        "http://127.0.0.1:{}/hook",
        lockstep_client::loopback::free_port().unwrap()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match admin
            .create_subscription(
                &request_id(),
                "ops-feed",
                &url,
                "ops",
                pb::SubscriptionFilter {
                    kinds: vec!["sla_breach".into()],
                    ..Default::default()
                },
                None,
            )
            .await
        {
            Ok(_) => break,
            Err(e)
                if e.to_string().contains("log format") && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let mut browser = Browser::new(&cluster, 0);
    browser.sign_in_dev(&common::admin_identity()).await;
    let page = browser.get("/subscriptions").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("ops-feed") && page.body.contains(&url),
        "{}",
        page.body
    );
    assert!(page.body.contains("kinds sla_breach"), "{}", page.body);
    assert!(page.body.contains(">active<"), "{}", page.body);

    // Without the form's token nothing changes; with it the subscription pauses, then resumes.
    let forged = browser
        .post("/subscriptions/ops-feed/pause", &[("csrf", "forged")])
        .await;
    assert_ne!(forged.status, 303);
    assert!(!admin.subscription("ops-feed").await.unwrap().paused);
    let paused = browser
        .post("/subscriptions/ops-feed/pause", &[("csrf", &page.csrf())])
        .await;
    assert_eq!(paused.status, 303, "{}", paused.body);
    let s = admin.subscription("ops-feed").await.unwrap();
    assert!(s.paused && s.paused_by == "admin", "{s:?}");
    let page = browser.get("/subscriptions").await;
    assert!(page.body.contains("paused by admin"), "{}", page.body);
    let resumed = browser
        .post("/subscriptions/ops-feed/resume", &[("csrf", &page.csrf())])
        .await;
    assert_eq!(resumed.status, 303, "{}", resumed.body);
    assert!(!admin.subscription("ops-feed").await.unwrap().paused);
    // An unknown subscription is refused with its code, on the page.
    let unknown = browser
        .post("/subscriptions/nope/pause", &[("csrf", &page.csrf())])
        .await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    assert!(
        unknown.body.contains("UNKNOWN_SUBSCRIPTION"),
        "{}",
        unknown.body
    );
}
