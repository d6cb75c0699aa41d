"""Redis servers as a careful deployment runs them: ACL users with the default user off, and TLS only.

``SecuredRedis`` is the embedded server (same binary, 127.0.0.1, own data folder) with ACL users
given on its command line and, optionally, TLS on its only port with a certificate signed by a
CA the test makes (``make_tls_files``, with the ``cryptography`` package). Its ``url`` logs in as
the first user; ``url_for`` builds any other user's URL.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote

from consumer.ops.embedded_redis import EmbeddedRedis, bundled_binary, free_port, server_version


def new_password() -> str:
    """A random password with characters a URL must escape (``@``, ``/``, ``:``)."""
    return f"Pw@{secrets.token_hex(8)}/x:y"


def leaks(password: str, text: str) -> bool:
    """True if ``text`` holds ``password`` in any form: as is, URL-escaped, or its random core."""
    core = re.search(r"[0-9a-f]{16}", password)
    forms = {password, quote(password, safe=""), *([core.group()] if core else [])}
    return any(form in text for form in forms)


@dataclass(frozen=True)
class AclUser:
    """One ACL user: name, password and rules (e.g. ``("~*", "&*", "+@all")``)."""

    name: str
    password: str
    rules: tuple[str, ...]

    def directive(self) -> list[str]:
        return ["--user", self.name, "on", f">{self.password}", "resetkeys", "resetchannels", "-@all", *self.rules]


@dataclass(frozen=True)
class TlsFiles:
    """A CA certificate and a server certificate (with its key) the CA signed, as PEM files."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def _key_and_name(common_name: str):
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    from cryptography import x509

    return ec.generate_private_key(ec.SECP256R1()), x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_pem(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def make_tls_files(folder: Path, label: str = "test") -> TlsFiles:
    """A fresh CA and a server certificate for 127.0.0.1 / localhost signed by it, valid for a day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, ca_name = _key_and_name(f"simstream {label} CA")
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA256()))
    key, name = _key_and_name("127.0.0.1")
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    key_format = (pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return TlsFiles(ca_cert=_write_pem(folder / f"{label}-ca.pem", ca_cert.public_bytes(pem)),
                    server_cert=_write_pem(folder / f"{label}-server.pem", cert.public_bytes(pem)),
                    server_key=_write_pem(folder / f"{label}-server.key", key.private_bytes(*key_format)))


@lru_cache(maxsize=None)
def supports_tls(binary: str) -> bool:
    """True if this redis-server was built with TLS (it then knows the ``tls-port`` directive)."""
    try:
        probe = subprocess.run([binary, "--port", "0", "--tls-port", "0"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "not listen anywhere" in probe.stdout + probe.stderr


def tls_binary() -> tuple[str | None, str]:
    """A redis-server built with TLS (>= 7 from PATH, else the bundled one if it has TLS), or None and why."""
    candidates = [path for path in (shutil.which("redis-server"), bundled_binary()) if path]
    for binary in candidates:
        if server_version(binary) >= (7, 0, 0) and supports_tls(binary):
            return binary, ""
    found = ", ".join(f"{path} {'.'.join(map(str, server_version(path)))}" for path in candidates) or "none"
    return None, (f"no redis-server >= 7 built with TLS (found: {found}; the bundled 6.2 has no TLS): "
                  "install Redis >= 7 with TLS to run the TLS tests")


class SecuredRedis(EmbeddedRedis):
    """An embedded redis-server on 127.0.0.1 with ACL users (default user off) and optionally TLS only.

    ``url`` logs in as ``users[0]`` (and, with TLS, names the CA as ``ssl_ca_certs``), so
    readiness checks and tests reach it like any client would.
    """

    def __init__(self, data_dir: Path, binary: str, users: list[AclUser], tls: TlsFiles | None = None) -> None:
        self.users = users
        self.tls = tls
        super().__init__(data_dir, port=free_port(), binary=binary, appendonly=False)

    def url_for(self, user: str | None, password: str | None, ca_in_url: bool = True) -> str:
        """The URL a client logging in as ``user`` with ``password`` uses (password URL-escaped)."""
        login = f"{quote(user or '', safe='')}:{quote(password, safe='')}@" if password is not None else ""
        scheme = "rediss" if self.tls else "redis"
        query = f"?ssl_ca_certs={self.tls.ca_cert}" if self.tls and ca_in_url else ""
        return f"{scheme}://{login}127.0.0.1:{self.port}/0{query}"

    @property
    def url(self) -> str:
        first = self.users[0]
        return self.url_for(first.name, first.password)

    def command(self) -> list[str]:
        args = super().command()
        if self.tls:
            args[args.index("--port") + 1] = "0"  # no plain-text port at all
            args += ["--tls-port", str(self.port), "--tls-cert-file", str(self.tls.server_cert),
                     "--tls-key-file", str(self.tls.server_key), "--tls-ca-cert-file", str(self.tls.ca_cert),
                     "--tls-auth-clients", "no"]
        args += ["--user", "default", "off"]
        for user in self.users:
            args += user.directive()
        return args
