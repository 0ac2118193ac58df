"""The partner node's one settings model, `PartnerNodeConfig`, read from ``partner.yaml``.

Example::

    federation: /srv/cobrand/federation.yaml
    schema: /srv/cobrand/partner.schema.yaml
    table: /srv/cobrand/partner.parquet
    listen: 0.0.0.0:7443
    data_dir: /srv/cobrand/partner-data      # the alignment result lives here
    tls:
      ca_bundle: /srv/cobrand/pki/trust.pem
      cert: /srv/cobrand/pki/partner-node.crt
      key: /srv/cobrand/pki/partner-node.key
    psi: {workers: 8, chunk_points: 8192}
    embedding: {unknown_key_lookups_per_minute: 600}
    consented_lookup: {oprf_key: /srv/cobrand/partner-data/oprf.key, lookups_per_minute: 120}

Relative paths are relative to the working directory. Every key can also come from the
environment, ``COBRAND_PARTNER_<KEY>`` (nested with ``__``, e.g. ``COBRAND_PARTNER_TLS__KEY``),
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

__all__ = ["ConsentedLookupSettings", "EmbeddingSettings", "PartnerNodeConfig"]


class EmbeddingSettings(Section):
    """How the node serves embeddings to the bank's gateway (``embedding:`` in its settings).

    Attributes
    ----------
    unknown_key_lookups_per_minute : int
        Lookups of keys outside the alignment each caller may make per minute, saved up to as
        many; beyond them a lookup is refused (RESOURCE_EXHAUSTED) and audited. Aligned keys
        are never counted. The gateway meets unknown keys only where the bank's alignment holds
        keys the partner's does not, and bulk targeting sends all of them on every run: the
        default leaves room for several runs a minute while bounding a prober to 10 keys a
        second.
    """

    unknown_key_lookups_per_minute: Annotated[int, Field(ge=1)] = 600


class ConsentedLookupSettings(Section):
    """The consented lookup of applicants outside the alignment (``consented_lookup:``).

    Attributes
    ----------
    oprf_key : Path, optional
        The node's long-term OPRF key: 32 bytes, a scalar of edwards25519's group, readable by
        the node's user alone. ``<data_dir>/oprf.key`` when not given; made (mode 0600) when
        the node starts without one. Kept like a private key and never committed; replacing
        it changes every user's lookup output, and the node rebuilds its index at start.
    lookups_per_minute : int
        BlindEvaluate calls each caller may make per minute, saved up to as many; beyond them
        a call is refused (RESOURCE_EXHAUSTED) and audited. Every call counts: each asks
        whether one person is a partner user. Sized for consenting applicants outside the
        alignment, a share of the bank's applications.
    """

    oprf_key: Path | None = None
    lookups_per_minute: Annotated[int, Field(ge=1)] = 120


class PartnerNodeConfig(ProcessSettings):
    """Settings of the partner's long-lived node.

    Attributes
    ----------
    federation : Path
        The federation file, identical at both parties.
    schema_file : Path
        The partner's party schema (key ``schema`` in the file).
    table : Path
        The partner's table (CSV or Parquet).
    listen : str
        ``host:port`` to serve on; port 0 picks a free port.
    data_dir : Path
        Where the node keeps its alignment result.
    tls : TlsFiles, optional
        The node's certificate (role ``partner``), key and trust bundle. Required unless
        `insecure`.
    insecure : bool
        Serve without TLS, for local development only.
    psi : PsiSettings
        Blinding workers and chunk size.
    embedding : EmbeddingSettings
        The per-caller limit on lookups of keys outside the alignment.
    consented_lookup : ConsentedLookupSettings
        The OPRF key and the per-caller limit of consented lookups.
    """

    model_config = SettingsConfigDict(env_prefix="COBRAND_PARTNER_")

    federation: Path
    schema_file: Path = Field(alias="schema")
    table: Path
    listen: str = "127.0.0.1:7443"
    data_dir: Path
    tls: TlsFiles | None = None
    insecure: bool = False
    psi: PsiSettings = PsiSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    consented_lookup: ConsentedLookupSettings = ConsentedLookupSettings()
