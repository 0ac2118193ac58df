"""``cobrand pki``: a party's own CA, its leaf certificates, and trusting the other party's CA.

A typical set-up, each party on its own machine::

    cobrand pki init --dir pki --party bank
    cobrand pki issue --dir pki --role gateway --name gw1 --host gw1.bank.example --days 365
    # send pki/ca.crt to the partner, receive theirs, compare fingerprints by phone
    cobrand pki import-peer-ca --dir pki --peer-ca partner-ca.crt
    # a certificate is lost or its holder leaves: revoke it, send pki/ca.crl to the partner
    cobrand pki revoke --dir pki --cert pki/app1.crt      # or --serial <hex from pki show>
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cobrand import pki
from cobrand.commands.exits import cli_errors
from cobrand.errors import ConfigError

__all__ = ["app"]

app = typer.Typer(
    help="Certificates: each party's own CA, leaf certificates by role, the peer's CA.",
    no_args_is_help=True,
)

PkiDir = Annotated[
    Path, typer.Option("--dir", help="The party's PKI directory (holds ca.crt, ca.key, trust.pem).")
]


@app.command()
def init(
    directory: PkiDir,
    party: Annotated[pki.Party, typer.Option(help="The party this CA speaks for.")],
    days: Annotated[int, typer.Option(min=1, help="CA lifetime in days.")] = pki.CA_DAYS,
) -> None:
    """Create this party's own certificate authority and its trust bundle."""
    with cli_errors():
        ca_cert = pki.init_ca(directory, party, days=days)
        typer.echo(f"created the {party} CA: {ca_cert} (key {directory / pki.CA_KEY}, owner-only)")
        typer.echo(f"sha256 fingerprint: {pki.fingerprint(ca_cert)}")
        typer.echo(f"send {ca_cert} to the other party; it holds no secret")


@app.command()
def issue(
    directory: PkiDir,
    role: Annotated[pki.Role, typer.Option(help="What the holder is; carried in the certificate.")],
    name: Annotated[str, typer.Option(help="The holder's name, e.g. gw1.")],
    host: Annotated[
        list[str] | None,
        typer.Option(help="DNS name or IP the holder serves on; repeat for several."),
    ] = None,
    days: Annotated[
        int, typer.Option(min=1, max=pki.MAX_LEAF_DAYS, help="Validity in days.")
    ] = 365,
    out: Annotated[
        Path | None, typer.Option(help="Directory for <name>.crt and <name>.key (default: --dir).")
    ] = None,
) -> None:
    """Issue a leaf certificate and key for one holder from this party's CA."""
    with cli_errors():
        files = pki.issue(directory, role, name, host or [], days=days, out_dir=out)
        typer.echo(f"issued {role} certificate {files.cert} (key {files.key}, owner-only)")


@app.command("import-peer-ca")
def import_peer_ca(
    directory: PkiDir,
    peer_ca: Annotated[
        Path, typer.Option(help="The other party's ca.crt (certificate only, never a key).")
    ],
) -> None:
    """Trust the other party's CA: add its certificate to this party's trust bundle."""
    with cli_errors():
        fingerprint = pki.fingerprint(peer_ca)
        party = pki.import_peer_ca(directory, peer_ca)
        typer.echo(f"now trusting the {party} CA from {peer_ca}")
        typer.echo(f"sha256 fingerprint: {fingerprint} (compare it with the {party}'s own)")


@app.command()
def show(
    file: Annotated[Path, typer.Argument(help="A certificate or bundle (PEM).")],
) -> None:
    """Print the identity, issuer, validity and names of each certificate in FILE."""
    with cli_errors():
        for line in pki.describe_certificate(file):
            typer.echo(line)


@app.command()
def revoke(
    directory: PkiDir,
    serial: Annotated[
        str | None, typer.Option(help="Serial number in hex, as `cobrand pki show` prints it.")
    ] = None,
    cert: Annotated[
        Path | None, typer.Option(help="The certificate to revoke (instead of --serial).")
    ] = None,
) -> None:
    """Revoke a leaf certificate of this party: add it to the CRL its CA signs, ca.crl."""
    with cli_errors():
        number = _serial_number(directory, serial, cert)
        crl = pki.revoke(directory, number)
        typer.echo(f"revoked serial {number:x}: {crl} (send it to the other party)")
        typer.echo("list it in each process's tls.crl and restart them to refuse it")


def _serial_number(directory: Path, serial: str | None, cert: Path | None) -> int:
    if cert is not None:
        if serial is not None:
            raise ConfigError("give --serial or --cert, not both")
        return pki.issued_serial(directory, cert)
    if serial is None:
        raise ConfigError("give the certificate to revoke: --serial or --cert")
    try:
        return int(serial.replace(":", ""), 16)
    except ValueError as exc:
        raise ConfigError(f"--serial {serial!r} is not a hexadecimal serial number") from exc
