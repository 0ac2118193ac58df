"""The bank node's one settings model, `BankNodeConfig`, read from ``bank.yaml``.

Example::

    federation: /srv/cobrand/federation.yaml
    schema: /srv/cobrand/bank.schema.yaml
    table: /srv/cobrand/bank.parquet
    data_dir: /srv/cobrand/bank-data         # the alignment result lives here
    partner:
      address: partner.example.com:7443
      call_timeout_s: 60
      stream_timeout_s: 3600
    tls:
      ca_bundle: /srv/cobrand/pki/trust.pem  # the bank's CA and the partner's
      cert: /srv/cobrand/pki/bank-node.crt   # role "bank"
      key: /srv/cobrand/pki/bank-node.key
    psi: {workers: 8, chunk_points: 8192}

Relative paths are relative to the working directory. Every key can also come from the
environment, ``COBRAND_BANK_<KEY>`` (nested with ``__``, e.g. ``COBRAND_BANK_PARTNER__ADDRESS``),
where the file leaves it out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from cobrand.alignment_protocol import PsiSettings
from cobrand.rpc import TlsFiles
from cobrand.settings import ProcessSettings, Section

__all__ = ["BankNodeConfig", "PartnerEndpoint"]


class PartnerEndpoint(Section):
    """Where the partner's node answers, and how long the bank waits for it.

    Attributes
    ----------
    address : str
        ``host:port`` of the partner node.
    server_name : str, optional
        The name to expect in the partner's certificate when it differs from the host.
    call_timeout_s : float
        Deadline of each single call (opening a run).
    stream_timeout_s : float
        Deadline of each streaming step of a run (its length grows with the sets).
    """

    address: str
    server_name: str | None = None
    call_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    stream_timeout_s: Annotated[float, Field(gt=0)] = 3600.0


class BankNodeConfig(ProcessSettings):
    """Settings of the bank's node.

    Attributes
    ----------
    federation : Path
        The federation file, identical at both parties.
    schema_file : Path
        The bank's party schema (key ``schema`` in the file).
    table : Path
        The bank's table (CSV or Parquet).
    data_dir : Path
        Where the node keeps its alignment result.
    partner : PartnerEndpoint
    tls : TlsFiles, optional
        The node's certificate (role ``bank``), key and trust bundle. Required unless
        `insecure`.
    insecure : bool
        Connect without TLS, for local development only.
    psi : PsiSettings
        Blinding workers and chunk size.
    """

    model_config = SettingsConfigDict(env_prefix="COBRAND_BANK_")

    federation: Path
    schema_file: Path = Field(alias="schema")
    table: Path
    data_dir: Path
    partner: PartnerEndpoint
    tls: TlsFiles | None = None
    insecure: bool = False
    psi: PsiSettings = PsiSettings()
