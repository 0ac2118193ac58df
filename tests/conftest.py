"""Test-wide set-up: an offline Flower environment for every test."""

import os
import tempfile

# Before anything imports flwr: no telemetry, no update check, a throw-away FLWR_HOME
# (removed by pytest_unconfigure).
os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
os.environ["FLWR_DISABLE_UPDATE_CHECK"] = "1"
os.environ["FLWR_HOME"] = tempfile.mkdtemp(prefix="cobrand-flwr-home-")


# --- A throw-away PKI, made once per test run (never committed keys or certificates) ----------
# Imported after the environment is set: cobrand must not pull flwr in before that.
import datetime as dt
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cobrand import pki as _pki
from cobrand.rpc import TlsFiles

# The run's shared published world, its partner node and gateway (`tests.gateway.shared_world`):
# a plugin, as tests outside tests/gateway use them too.
pytest_plugins = ["tests.gateway.shared_world"]


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(os.environ["FLWR_HOME"], ignore_errors=True)


_LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
# holder -> (CA directory, role, hosts); the holder is also the certificate's name.
_HOLDERS: dict[str, tuple[str, _pki.Role, tuple[str, ...]]] = {
    "gateway": ("bank", _pki.Role.GATEWAY, _LOOPBACK_HOSTS),
    "bank": ("bank", _pki.Role.BANK, _LOOPBACK_HOSTS),
    "bank-trainer": ("bank", _pki.Role.BANK_TRAINER, ()),
    "app": ("bank", _pki.Role.APP, ()),
    "partner": ("partner", _pki.Role.PARTNER, _LOOPBACK_HOSTS),
    "partner-app": ("partner", _pki.Role.APP, ()),
    "expired-app": ("bank", _pki.Role.APP, ()),
    "foreign-app": ("foreign", _pki.Role.APP, _LOOPBACK_HOSTS),
}


@dataclass(frozen=True)
class ThrowAwayPki:
    """The bank's and the partner's CAs (each trusting the other), a foreign bank CA trusted by
    nobody, and leaf certificates for every holder in `_HOLDERS`; `expired-app` expired weeks ago.
    """

    root: Path

    def ca_dir(self, ca: str) -> Path:
        """PKI directory of CA `ca`: "bank", "partner" or "foreign"."""
        return self.root / ca

    def tls(self, holder: str) -> TlsFiles:
        """The holder's certificate and key with its own party's trust bundle."""
        ca = _HOLDERS[holder][0]
        issued = self.ca_dir(ca) / "issued"
        return TlsFiles(
            ca_bundle=self.ca_dir(ca) / "trust.pem",
            cert=issued / f"{holder}.crt",
            key=issued / f"{holder}.key",
        )


@pytest.fixture(scope="session")
def throwaway_pki(tmp_path_factory: pytest.TempPathFactory) -> ThrowAwayPki:
    """A complete two-party PKI under a session temp directory; see ThrowAwayPki."""
    made = ThrowAwayPki(tmp_path_factory.mktemp("pki"))
    _pki.init_ca(made.ca_dir("bank"), _pki.Party.BANK)
    _pki.init_ca(made.ca_dir("partner"), _pki.Party.PARTNER)
    _pki.init_ca(made.ca_dir("foreign"), _pki.Party.BANK)
    _pki.import_peer_ca(made.ca_dir("bank"), made.ca_dir("partner") / "ca.crt")
    _pki.import_peer_ca(made.ca_dir("partner"), made.ca_dir("bank") / "ca.crt")
    weeks_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    for holder, (ca, role, hosts) in _HOLDERS.items():
        _pki.issue(
            made.ca_dir(ca),
            role,
            holder,
            hosts,
            days=1 if holder == "expired-app" else 30,
            out_dir=made.ca_dir(ca) / "issued",
            now=weeks_ago if holder == "expired-app" else None,
        )
    return made


def forge_leaf(
    ca_dir: Path, out_dir: Path, *, subject: dict[str, str], uris: tuple[str, ...]
) -> TlsFiles:
    """Sign a leaf with the CA in `ca_dir` bypassing `pki.issue`'s rules (a misbehaving CA).

    `subject` maps "O", "OU", "CN" to values; `uris` become the SAN URIs.
    """
    oids = {
        "O": NameOID.ORGANIZATION_NAME,
        "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
        "CN": NameOID.COMMON_NAME,
    }
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names.append(x509.DNSName("localhost"))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(oids[k], v) for k, v in subject.items()]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(
        ca_bundle=ca_dir / "trust.pem", cert=out_dir / "forged.crt", key=out_dir / "forged.key"
    )
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files.key.chmod(0o600)
    return files


# --- The shared real data ----------------------------------------------------------------------
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real data directory, ``../shared/data`` beside the repository.

    CI always has it, so its absence is a failure, never a skip.
    """
    if not SHARED_DATA.is_dir():
        pytest.fail(
            f"shared data directory {SHARED_DATA} is missing: the real default-credit files "
            "must sit in ../shared/data beside the repository (CI clones it there)"
        )
    return SHARED_DATA
