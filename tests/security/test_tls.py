"""TLS to RabbitMQ: ``amqps://`` with a CA, a client certificate and its key.

A private RabbitMQ node with a TLS listener on 127.0.0.1 only, and certificates
this module makes (a CA, the broker's certificate for 127.0.0.1, a client
certificate): the broker verifies the client (``verify_peer`` and
``fail_if_no_peer_cert``), the client verifies the broker. A dispatcher, an agent
and a client, each configured from settings as ``pd-dispatcher``, ``pd-eeagent`` and
``pd-cli`` are, run a process over it; a client that does not trust the CA, or has
no certificate, cannot connect.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dashi.client import RpcClient
from dashi.errors import TransportError
from dispatcher.client import ProcessDispatcherClient
from dispatcher.service import DispatcherService
from eeagent.agent import EEAgent
from eeagent.fake import FakeProcessControl
from eeagent.service import AgentService
from pdcommon.settings import Settings, load_settings
from pdcommon.wire import agent_signer, agent_verifier, broker_config
from tests.conftest import unavailable
from tests.eeagent.conftest import sleeper
from tests.infra import RabbitMQServer, free_port
from tests.support.waiting import waiter

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

wait_for = waiter(60.0)


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name, issuer_key = issuer if issuer is not None else (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(directory: Path, name: str, cert: x509.Certificate, key: Any) -> None:
    (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = directory / f"{name}.key"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)


def make_certificates(directory: Path) -> None:
    """``ca``, ``server`` (127.0.0.1), ``client`` and an untrusted ``other-ca``."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue("pd-test-ca", ca_key, None, ca=True)
    _write(directory, "ca", ca, ca_key)
    for name, server in (("server", True), ("client", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        _write(directory, name, _issue(name, key, (ca.subject, ca_key), server=server), key)
    other_key = ec.generate_private_key(ec.SECP256R1())
    _write(directory, "other-ca", _issue("other-ca", other_key, None, ca=True), other_key)


class TlsBroker:
    def __init__(self, server: RabbitMQServer, tls_port: int, certs: Path) -> None:
        self.server = server
        self.tls_port = tls_port
        self.certs = certs

    @property
    def uri(self) -> str:
        return f"amqps://guest:guest@127.0.0.1:{self.tls_port}//"

    def amqp(self, *, ca: str = "ca", client: bool = True) -> dict[str, Any]:
        settings: dict[str, Any] = {"uri": self.uri, "ssl_ca": str(self.certs / f"{ca}.pem")}
        if client:
            settings["ssl_cert"] = str(self.certs / "client.pem")
            settings["ssl_key"] = str(self.certs / "client.key")
        return settings


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    if RabbitMQServer.missing_reason() is not None:
        unavailable(RabbitMQServer.missing_reason() or "no RabbitMQ")
    certs = tmp_path_factory.mktemp("certs")
    make_certificates(certs)
    tls_port = free_port()
    server = RabbitMQServer(
        extra_config=[
            f"listeners.ssl.default = 127.0.0.1:{tls_port}",
            f"ssl_options.cacertfile = {certs / 'ca.pem'}",
            f"ssl_options.certfile = {certs / 'server.pem'}",
            f"ssl_options.keyfile = {certs / 'server.key'}",
            "ssl_options.verify = verify_peer",
            "ssl_options.fail_if_no_peer_cert = true",
        ]
    )
    server.start()
    try:
        yield TlsBroker(server, tls_port, certs)
    finally:
        server.close()


def settings_for(tmp_path: Path, amqp: dict[str, Any], **overrides: Any) -> Settings:
    return load_settings(
        overrides={
            "state_dir": str(tmp_path / "state"),
            "server.amqp": amqp,
            "dashi.sysname": f"tls{uuid.uuid4().hex[:8]}",
            "processdispatcher.database_url": f"sqlite:///{tmp_path}/pd.db",
            "processdispatcher.engines": {"e1": {"slots": 2}},
            "provisioner.driver": "static",
            "security.hmac_key": "tls-test-master-key-0123456789",
            **overrides,
        }
    )


def test_the_dispatcher_an_agent_and_a_client_work_over_mutual_tls(
    tls_broker: TlsBroker, tmp_path: Path
) -> None:
    # Given settings with an amqps:// URL, the CA and a client certificate
    settings = settings_for(tmp_path, tls_broker.amqp())
    broker = broker_config(settings)
    assert broker.uses_tls and isinstance(broker.ssl_options(), dict)
    service = DispatcherService.build(settings)
    service.start()
    agent = AgentService(
        EEAgent(name="tls-agent", node_id="n1", slots=2, control=FakeProcessControl()),
        broker=broker,
        pd_name="process_dispatcher",
        heartbeat=1,
        verifier=agent_verifier(settings),
        signer=agent_signer(settings, "tls-agent"),
    )
    try:
        with ProcessDispatcherClient.from_settings(settings, timeout=20) as client:
            client.node_state("n1", "pd_domain_e1", "600-RUNNING")
            agent.start()
            # When a process is scheduled (signed launch, signed heartbeats, all over TLS)
            client.create_definition("D", "supd", sleeper())
            client.schedule_process("p1", "D")
            # Then it runs
            wait_for(
                lambda: (client.describe_process("p1") or {}).get("state") == "500-RUNNING",
                what="p1 running over TLS",
            )
    finally:
        agent.stop()
        service.stop()


@pytest.mark.parametrize(
    ("ca", "client", "reasons"),
    [
        ("other-ca", True, ("CERTIFICATE_VERIFY_FAILED",)),
        # TLS 1.3 checks the client's certificate after the client has finished its
        # side of the handshake: the broker's alert is read, or the connection it
        # closes at once is seen first (an EOF inside the TLS session), whichever
        # the client meets first. Either is a refusal inside TLS.
        ("ca", False, ("CERTIFICATE_REQUIRED", "EOF occurred in violation of protocol")),
    ],
    ids=["broker-not-trusted", "no-client-certificate"],
)
def test_a_peer_without_the_right_certificates_cannot_connect(
    tls_broker: TlsBroker, tmp_path: Path, ca: str, client: bool, reasons: tuple[str, ...]
) -> None:
    settings = settings_for(tmp_path, tls_broker.amqp(ca=ca, client=client))
    rpc = RpcClient(broker_config(settings), "outsider", timeout=5)
    with pytest.raises(TransportError) as info:
        rpc.call("process_dispatcher", "list_definitions")
    rpc.close()
    # (refused in the TLS handshake, not for want of a listener)
    assert any(reason in str(info.value) for reason in reasons), info.value
