"""Which model versions the gateway may ask the partner for: those whose partner copy was checked.

The bank records, when both sides publish a version, the partner's manifest digest of it.
Before a version's embeddings are used, `PartnerCheck` asks the partner for its digest now
(``DescribeVersion``), checks it is the recorded one (`verify_peer`) and has the partner load
the version (`PartnerClient.warm_up`). At start an unreachable partner is only logged and asked
again in the background (the gateway scores bank-only meanwhile); a version swapped in later
must be verified at once (`PartnerCheck.adopt`), since the partner half is published first.

The versions verified stay verified: calls still in progress on the version swapped out keep
their partner slice until they finish.
"""

from __future__ import annotations

import logging
import threading

from cobrand.errors import FailedPrecondition, Unavailable
from cobrand.model_manifest import Manifest, verify_peer
from gateway.partner_client import PartnerClient

__all__ = ["PartnerCheck"]

_LOG = logging.getLogger(__name__)


class PartnerCheck:
    """The partner client, handed out only for versions the partner is known to hold.

    Parameters
    ----------
    client : PartnerClient
    manifest : Manifest
        The bank's manifest of the version served at start (holds the partner's digest).
    timeout_s : float
        Deadline of each check.
    retry_s : float
        Pause between checks while the partner cannot be reached at start.
    """

    def __init__(
        self, client: PartnerClient, manifest: Manifest, timeout_s: float, retry_s: float
    ) -> None:
        self._client = client
        self._manifest = manifest
        self._timeout_s = timeout_s
        self._retry_s = retry_s
        # Replaced whole, never mutated: readers on the handler threads take no lock.
        self._verified: frozenset[str] = frozenset()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._retrying: threading.Thread | None = None

    @property
    def verified(self) -> bool:
        """Whether the partner's copy of the version served now was checked and found the same."""
        return self._manifest.version_id in self._verified

    def __call__(self, version_id: str) -> PartnerClient | None:
        """The client for `version_id`, or None while it is not verified at the partner."""
        return self._client if version_id in self._verified else None

    def check(self) -> bool:
        """Ask the partner now about the start-up version; True once verified, False if it
        could not be reached.

        Raises
        ------
        FailedPrecondition
            The partner answers for another version or holds other files than published.
        """
        try:
            self._verify(self._manifest)
        except Unavailable as err:
            _LOG.warning(
                "[Gateway] partner not verified for model version %s (%s): scoring from the "
                "bank's slice alone, asking again every %.0f s",
                self._manifest.version_id,
                err,
                self._retry_s,
            )
            return False
        return True

    def adopt(self, manifest: Manifest) -> None:
        """Verify the partner holds `manifest`'s version now and make it the version served.

        Stops the start-up checks in the background, if any are still going.

        Raises
        ------
        FailedPrecondition
            The partner cannot be asked, does not hold the version, or holds other files.
        """
        try:
            self._verify(manifest)
        except Unavailable as err:
            raise FailedPrecondition(
                f"model version {manifest.version_id} is not verified at the partner ({err}); "
                "publish the partner's half first"
            ) from None
        self.stop()
        self._manifest = manifest

    def keep_checking(self) -> None:
        """Check the start-up version again in the background until verified, refused or
        stopped."""
        self._retrying = threading.Thread(target=self._retry, name="partner-check", daemon=True)
        self._retrying.start()

    def stop(self) -> None:
        """Stop checking in the background."""
        self._stopping.set()
        if self._retrying is not None and self._retrying is not threading.current_thread():
            self._retrying.join()

    def _verify(self, manifest: Manifest) -> None:
        version_id = manifest.version_id
        answered, digest = self._client.describe(version_id, self._timeout_s)
        verify_peer(manifest, answered, digest)
        self._client.warm_up(version_id, self._timeout_s)
        with self._lock:
            self._verified = self._verified | {version_id}
        _LOG.info("[Gateway] the partner holds model version %s as published", version_id)

    def _retry(self) -> None:
        while not self._stopping.wait(self._retry_s):
            try:
                if self.check():
                    return
            except FailedPrecondition as err:
                _LOG.error("[Gateway] the partner's model version is refused: %s", err)
                return
