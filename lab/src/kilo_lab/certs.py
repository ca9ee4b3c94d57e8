"""Certificates for a throw-away control plane: a self-signed CA issuing serving and client
certificates, and kubeconfigs that carry them."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import pathlib
from collections.abc import Mapping, Sequence

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def pem_public(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class CA:
    """A self-signed certificate authority that signs serving and client certificates."""

    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )

    def issue(
        self,
        common_name: str,
        orgs: Sequence[str] = (),
        *,
        server: bool = False,
        dns: Sequence[str] = (),
        ips: Sequence[str] = (),
    ) -> tuple[bytes, bytes]:
        """A (cert PEM, key PEM) pair for a client or, with ``server``, a serving certificate."""
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        now = datetime.datetime.now(datetime.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
            names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return pem_cert(cert), pem_key(key)


def write_pki(directory: pathlib.Path, sans: Sequence[str]) -> CA:
    """A CA (``ca.crt``), the API server's serving certificate (``serving.crt``/``.key``, for
    localhost, the ``kubernetes`` names, loopback and ``sans``), an admin client certificate
    (``admin.crt``/``.key``, group system:masters) and the service-account signing key
    (``sa.key``/``sa.pub``) in ``directory``; returns the CA."""
    ca = CA("kpy-ca")
    (directory / "ca.crt").write_bytes(pem_cert(ca.cert))
    ips = {"127.0.0.1", "::1"}
    dns = {
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    }
    for san in sans:
        try:
            ips.add(str(ipaddress.ip_address(san)))
        except ValueError:
            dns.add(san)

    def private(name: str, data: bytes) -> None:
        path = directory / name
        path.write_bytes(data)
        path.chmod(0o600)

    cert, key = ca.issue("kpy-apiserver", server=True, dns=sorted(dns), ips=sorted(ips))
    private("serving.crt", cert)
    private("serving.key", key)
    cert, key = ca.issue("kpy-admin", ["system:masters"])
    private("admin.crt", cert)
    private("admin.key", key)
    sa_key = ec.generate_private_key(ec.SECP256R1())
    private("sa.key", pem_key(sa_key))
    (directory / "sa.pub").write_bytes(pem_public(sa_key))
    return ca


def write_kubeconfig(
    path: pathlib.Path, server: str, ca_pem: bytes, user: str, creds: Mapping[str, str]
) -> None:
    """A kubeconfig (mode 0600) for ``server`` trusting ``ca_pem``, as ``user`` with ``creds``
    (client-certificate-data/client-key-data, or token)."""
    ca = base64.b64encode(ca_pem).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "kpy",
        "clusters": [
            {"name": "kpy", "cluster": {"server": server, "certificate-authority-data": ca}}
        ],
        "users": [{"name": user, "user": dict(creds)}],
        "contexts": [{"name": "kpy", "context": {"cluster": "kpy", "user": user}}],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


def cert_creds(cert: bytes, key: bytes) -> dict[str, str]:
    return {
        "client-certificate-data": base64.b64encode(cert).decode(),
        "client-key-data": base64.b64encode(key).decode(),
    }
