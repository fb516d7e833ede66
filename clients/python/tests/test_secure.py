"""TLS with a custom CA, client certificates and bearer tokens against a secure one-node
cluster (no --dev). The CA, the certificates and an Ed25519 JWT key are made with the openssl
command line; the module's node runs before the session's dev cluster starts (conftest.py
orders these tests first), so that only one cluster runs at a time."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

import pytest
from conftest import PURCHASE_ORDER, START_SECONDS, bin_dir, free_port

from lockstep import Client, Credentials, LockstepError, Options, Tls, Unauthenticated, Unavailable

ISSUER, AUDIENCE = "https://issuer.sdk.test", "lockstep"
NODE_NAME = "node-1.lockstep.test"
OPTIONS = Options(attempt_timeout=5.0, total_timeout=10.0)

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def openssl(*args: str, cwd: Path, data: Optional[bytes] = None) -> bytes:
    run = subprocess.run(["openssl", *args], cwd=cwd, input=data, capture_output=True)
    assert run.returncode == 0, run.stderr.decode()
    return run.stdout


def issue(pki: Path, name: str, subject: str, extensions: Sequence[str]) -> None:
    """``name.pem`` and ``name-key.pem``: a P-256 key and a certificate from the test CA."""
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}-key.pem", "-out", f"{name}.csr", "-subj", subject, cwd=pki)  # fmt: skip
    (pki / f"{name}.ext").write_text("\n".join(["basicConstraints=CA:FALSE", *extensions]) + "\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
            "-days", "1", "-out", f"{name}.pem", "-extfile", f"{name}.ext", cwd=pki)  # fmt: skip


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class SecureNode:
    pki: Path
    endpoint: str
    process: "subprocess.Popen[bytes]"

    def token(self, actor: str, roles: List[str], kind: str = "human") -> str:
        """An EdDSA JWT for ``actor``, signed with the node's issuer key."""
        now = int(time.time())
        header = b64(json.dumps({"alg": "EdDSA", "typ": "JWT"}).encode())
        claims = {"sub": actor, "roles": roles, "lockstep_kind": kind, "iss": ISSUER, "aud": AUDIENCE,
                  "iat": now, "exp": now + 600}  # fmt: skip
        payload = b64(json.dumps(claims).encode())
        signing_input = f"{header}.{payload}".encode()
        (self.pki / "jwt-input").write_bytes(signing_input)
        signature = openssl("pkeyutl", "-sign", "-inkey", "jwt-key.pem", "-rawin", "-in", "jwt-input", cwd=self.pki)
        return f"{header}.{payload}.{b64(signature)}"

    def tls(self, client: Optional[str] = None, server_name: Optional[str] = None) -> Tls:
        if client is None:
            return Tls.from_files(self.pki / "ca.pem", server_name=server_name)
        return Tls.from_files(self.pki / "ca.pem", self.pki / f"{client}.pem", self.pki / f"{client}-key.pem")

    def client(self, credentials: Credentials, options: Options = OPTIONS) -> Client:
        return Client([self.endpoint], credentials=credentials, options=options)


def make_pki(pki: Path) -> None:
    pki.mkdir()
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "ca-key.pem", "-out", "ca.pem", "-subj", "/CN=sdk test CA", "-days", "1",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=pki)  # fmt: skip
    issue(pki, "node-1", "/CN=node-1", [
        f"subjectAltName=DNS:{NODE_NAME},IP:127.0.0.1",
        "extendedKeyUsage=serverAuth,clientAuth",
    ])  # fmt: skip
    issue(pki, "alice", "/CN=alice", [
        "subjectAltName=URI:lockstep:kind:human,URI:lockstep:role:requester",
        "extendedKeyUsage=clientAuth",
    ])  # fmt: skip
    openssl("genpkey", "-algorithm", "ed25519", "-out", "jwt-key.pem", cwd=pki)
    openssl("pkey", "-in", "jwt-key.pem", "-pubout", "-out", "jwt.pem", cwd=pki)
    # A second CA the node does not trust.
    other = pki / "other"
    other.mkdir()
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "ca-key.pem", "-out", "ca.pem", "-subj", "/CN=another CA", "-days", "1", cwd=other)  # fmt: skip


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureNode]:
    directory = tmp_path_factory.mktemp("secure")
    pki = directory / "pki"
    make_pki(pki)
    endpoint = f"127.0.0.1:{free_port()}"
    command = [
        str(bin_dir() / "lockstepd"),
        "--id", "1", "--listen", endpoint, "--initial-members", f"1={endpoint}",
        "--data-dir", str(directory / "node1"),
        "--tls-cert", str(pki / "node-1.pem"), "--tls-key", str(pki / "node-1-key.pem"),
        "--tls-ca", str(pki / "ca.pem"),
        "--jwt-keys", str(pki / "jwt.pem"), "--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE,
    ]  # fmt: skip
    log = directory / "node1.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=out, env=dict(os.environ, RUST_LOG="info"))
    node = SecureNode(pki, endpoint, process)
    try:
        admin = Credentials(tls=node.tls(), token=node.token("admin", ["admin"]))
        with node.client(admin, Options(attempt_timeout=2.0, total_timeout=START_SECONDS)) as client:
            deadline = time.monotonic() + START_SECONDS
            while True:
                assert process.poll() is None, log.read_text()
                try:
                    if client.status().leader_id:
                        break
                except LockstepError:
                    pass
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        yield node
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_a_bearer_token_and_a_client_certificate_name_the_actor(secure: SecureNode) -> None:
    admin = Credentials(tls=secure.tls(server_name=NODE_NAME), token=secure.token("admin", ["admin"]))
    with secure.client(admin) as client:
        client.apply_definition(PURCHASE_ORDER)
    # mTLS: the certificate's CN is the actor, its URI SANs the kind and roles.
    with secure.client(Credentials(tls=secure.tls("alice"))) as alice:
        created = alice.create_instance("purchase-order", {"amount": 5, "requester": "alice"})
        alice.transition(created.instance_id, "submit")
    with secure.client(admin) as client:
        history = client.history(created.instance_id)
    assert [(r.actor.id, r.actor.roles) for r in history] == [("alice", ("requester",))] * 2
    assert history[0].actor.authn == "mtls"
    # The token counts over the certificate when both are sent.
    both = Credentials(tls=secure.tls("alice"), token=secure.token("bob", ["approver"]))
    with secure.client(both) as bob:
        assert bob.transition(created.instance_id, "approve").state == "approved"
    with secure.client(admin) as client:
        approved = client.history(created.instance_id)[-1]
    assert (approved.actor.id, approved.actor.authn) == ("bob", "jwt")


def test_no_credentials_or_an_unknown_ca_are_refused(secure: SecureNode) -> None:
    with secure.client(Credentials(tls=secure.tls())) as anonymous:
        with pytest.raises(Unauthenticated):
            anonymous.create_instance("purchase-order", {"amount": 5, "requester": "x"})
    # A CA that did not issue the node's certificate: the handshake fails, as for a node that
    # is down, and the call gives up after total_timeout.
    stranger = Credentials(tls=Tls.from_files(secure.pki / "other" / "ca.pem"), token=secure.token("admin", ["admin"]))
    with secure.client(stranger, Options(attempt_timeout=1.0, total_timeout=1.5)) as client:
        with pytest.raises(Unavailable):
            client.status()
