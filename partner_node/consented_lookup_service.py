"""The partner's ConsentedLookup service: the oblivious PRF lookup of an applicant outside the
aligned set, for the bank's gateway only.

``BlindEvaluate`` multiplies the gateway's blinded element by the node's OPRF key
(``cobrand.oprf.blind_evaluate``, RFC 9497's OPRF(ristretto255, SHA-512); an element that is
not the canonical encoding of a ristretto255 element other than the identity is
``INVALID_ARGUMENT`` naming ``blinded_element``). ``GetConsentedEmbedding`` finds
the partner user whose lookup output the gateway sends (``partner_node.oprf_index``) and
answers with the embedding the version's bottom gives that user's row now
(`ServingVersion.embed_row`), or ``UNKNOWN_KEY``. No raw feature and no identifier leaves.

Only the bank's gateway (role ``gateway``) may call (`CONSENTED_LOOKUP_ROLES`). Every
BlindEvaluate is a probe of whether one person is a partner user, so each takes a token of the
caller's own budget (``consented_lookup.lookups_per_minute``; beyond it RESOURCE_EXHAUSTED,
refusals appended to ``probe_audit.jsonl``). Every call answered is appended, with its consent
reference, to ``consented_lookup_audit.jsonl`` (one JSON object a line): caller, call, request
id, consent reference and, for an embedding, the version and whether a user was found; never the
element, the output or the user. A BlindEvaluate's line is fsynced before its answer, a
GetConsentedEmbedding's only written (see `ConsentedLookupServicer.GetConsentedEmbedding`).

The index is read from its saved file at the node's start when there is one (a node that has
served consented lookups before will again, and reading takes seconds), else made on the first
lookup (``partner_node.oprf_index``).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import grpc

from cobrand import oprf
from cobrand.durable import append_line
from cobrand.errors import InvalidRequest
from cobrand.federation import Federation
from cobrand.pki import Role
from cobrand.rpc import ServicerAdder, service_roles
from cobrand.tables import PartyTable
from cobrand.v1 import consented_lookup_pb2, consented_lookup_pb2_grpc, embedding_pb2
from partner_node.config import PartnerNodeConfig
from partner_node.embedding_service import check_call_id, load_wait_s
from partner_node.oprf_index import OPRF_KEY_FILE, OprfIndexBuild, load_or_create_key
from partner_node.oprf_index_file import OPRF_INDEX_FILE
from partner_node.probe_limit import PROBE_AUDIT_FILE, ProbeLimiter, caller_urn
from partner_node.serving_models import ServingModels

__all__ = [
    "CONSENTED_LOOKUP_AUDIT_FILE",
    "CONSENTED_LOOKUP_ROLES",
    "ConsentAudit",
    "ConsentedLookupServicer",
    "consented_lookup_service",
]

_LOG = logging.getLogger(__name__)

CONSENTED_LOOKUP_ROLES = service_roles(
    consented_lookup_pb2.DESCRIPTOR.services_by_name["ConsentedLookup"],
    frozenset({Role.GATEWAY}),
)
"""Who may call each ConsentedLookup method: the bank's gateway (role ``gateway``)."""

CONSENTED_LOOKUP_AUDIT_FILE: Final = "consented_lookup_audit.jsonl"
"""The audit file of every consented lookup call answered, under the node's ``data_dir``."""

# The bank's application id: printable ASCII, as the gateway accepts it.
_CONSENT_REFERENCE = re.compile(r"[\x20-\x7e]{1,128}")


def _check_consent_reference(value: str) -> None:
    if not _CONSENT_REFERENCE.fullmatch(value):
        shown = f"{len(value)} characters" if value else "empty"
        raise InvalidRequest(
            f"consent_reference must be 1 to 128 printable ASCII characters; it is {shown}"
        )


class ConsentAudit:
    """Appends one JSON line per consented lookup call to a file; thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(
        self,
        caller: str,
        call: str,
        request_id: str,
        consent: str,
        *,
        durable: bool,
        **facts: object,
    ) -> None:
        """Record one call answered before its answer goes out; on disk if `durable`, else
        written to the kernel (carried to disk by the next durable line at the latest)."""
        record = {
            "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "caller": caller,
            "call": call,
            "request_id": request_id,
            "consent_reference": consent,
            **facts,
        }
        line = json.dumps(record, sort_keys=True)
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            append_line(self.path, line, sync=durable)


class ConsentedLookupServicer(consented_lookup_pb2_grpc.ConsentedLookupServicer):
    """Answers consented lookups over one node's users; see the module docstring.

    Parameters
    ----------
    index : OprfIndexBuild
        The node's key and its users' lookup outputs.
    models : ServingModels
    table : PartyTable
        The partner's table, whose rows the index points at.
    limit : ProbeLimiter
        One token per BlindEvaluate.
    audit : ConsentAudit
    """

    def __init__(
        self,
        index: OprfIndexBuild,
        models: ServingModels,
        table: PartyTable,
        limit: ProbeLimiter,
        audit: ConsentAudit,
    ) -> None:
        self._index = index
        self._models = models
        self._table = table
        self._limit = limit
        self._audit = audit

    def BlindEvaluate(  # noqa: N802 -- the generated servicer's method name
        self, request: consented_lookup_pb2.BlindEvaluateRequest, context: grpc.ServicerContext
    ) -> consented_lookup_pb2.BlindEvaluateResponse:
        check_call_id(request.request_id, "request_id")
        _check_consent_reference(request.consent_reference)
        oprf.check_element(request.blinded_element, "blinded_element")
        # The index is needed next: start building it if this is the node's first lookup.
        self._index.start()
        who = caller_urn(context)
        self._limit.charge(
            who,
            1,
            f"BlindEvaluate request {request.request_id} consent {request.consent_reference!r}",
        )
        evaluated = oprf.blind_evaluate(self._index.key, request.blinded_element)
        # The consent record: on disk before the evaluation that lets the gateway compute y.
        self._audit.append(
            who, "BlindEvaluate", request.request_id, request.consent_reference, durable=True
        )
        _LOG.info(
            "[ConsentedLookup.BlindEvaluate] request %s consent %r from %s",
            request.request_id,
            request.consent_reference,
            who,
        )
        return consented_lookup_pb2.BlindEvaluateResponse(
            request_id=request.request_id, evaluated_element=evaluated
        )

    def GetConsentedEmbedding(  # noqa: N802
        self,
        request: consented_lookup_pb2.GetConsentedEmbeddingRequest,
        context: grpc.ServicerContext,
    ) -> consented_lookup_pb2.GetConsentedEmbeddingResponse:
        check_call_id(request.request_id, "request_id")
        _check_consent_reference(request.consent_reference)
        if len(request.oprf_output) != oprf.OUTPUT_BYTES:
            raise InvalidRequest(
                f"oprf_output must be {oprf.OUTPUT_BYTES} bytes, it is {len(request.oprf_output)}"
            )
        wait_s = load_wait_s(context)
        version = self._models.version(request.model_version, wait_s)
        row = self._index.index(wait_s).row(request.oprf_output)
        reply = consented_lookup_pb2.GetConsentedEmbeddingResponse(
            request_id=request.request_id,
            model_version=version.version_id,
            status=embedding_pb2.LOOKUP_STATUS_UNKNOWN_KEY,
        )
        if row is not None:
            embedding = version.embed_row(
                self._table.numeric[row].tolist(), self._table.categorical[row].tolist()
            )
            reply.status = embedding_pb2.LOOKUP_STATUS_FOUND
            reply.embedding.extend(embedding.tolist())
        who = caller_urn(context)
        # Not fsynced: y is F_k(x), which only this node's key computes, so every output a caller
        # can send came from a BlindEvaluate whose consent and probe are already on disk. This
        # line adds the outcome (version, found); written to the kernel, it survives a crash of
        # the node, and only a crash of the machine before the next BlindEvaluate's fsync loses
        # it, which loses no consent. It saves the second of a lookup's two disk flushes.
        self._audit.append(
            who,
            "GetConsentedEmbedding",
            request.request_id,
            request.consent_reference,
            durable=False,
            model_version=version.version_id,
            found=row is not None,
        )
        _LOG.info(
            "[ConsentedLookup.GetConsentedEmbedding] request %s consent %r version %s: %s",
            request.request_id,
            request.consent_reference,
            version.version_id,
            "found" if row is not None else "not a partner user",
        )
        return reply


def consented_lookup_service(
    config: PartnerNodeConfig,
    federation: Federation,
    kind: str,
    table: PartyTable,
    models: ServingModels,
) -> ServicerAdder:
    """Register ConsentedLookup for a node on a server (for ``create_server``).

    Reads or makes the node's OPRF key. The index of `table`'s users, whose identifiers are of
    identifier kind `kind`, starts loading from ``<data_dir>/oprf_index.bin`` in the background
    now if that file exists, else on the first consented lookup.

    Raises
    ------
    ConfigError
        The key file cannot be read or made, may be read by others, or holds no key (named).
    """
    settings = config.consented_lookup
    key = load_or_create_key(settings.oprf_key or config.data_dir / OPRF_KEY_FILE)
    index = OprfIndexBuild(
        key, kind, table.ids, oprf.lookup_domain(federation), config.data_dir / OPRF_INDEX_FILE
    )
    if index.saved.exists():
        # This node has served consented lookups: have them available within seconds of the
        # start rather than after the gateway's first call (or, if the file no longer matches,
        # start the rebuild that call would start).
        index.start()
    servicer = ConsentedLookupServicer(
        index,
        models,
        table,
        ProbeLimiter(
            settings.lookups_per_minute,
            config.data_dir / PROBE_AUDIT_FILE,
            limited="consented lookups",
            setting="consented_lookup.lookups_per_minute",
        ),
        ConsentAudit(config.data_dir / CONSENTED_LOOKUP_AUDIT_FILE),
    )

    def add(server: grpc.Server) -> None:
        # The generated *_pb2_grpc modules come without type annotations.
        consented_lookup_pb2_grpc.add_ConsentedLookupServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]

    return add
