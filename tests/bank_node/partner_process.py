"""A partner data plane in a process of its own, for the tests that kill or freeze it.

    python -m tests.bank_node.partner_process PKI_ROOT PORT_FILE

Serves run `RUN` (round 1 planned) over random rows with the throw-away PKI under PKI_ROOT, then
writes the port it listens on to PORT_FILE and serves until killed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from cobrand.preprocess import Encoded
from cobrand.rpc import create_server
from cobrand.split_model import BottomSpec
from partner_node.dataplane_service import ALLOWED_ROLES, DataPlaneService
from partner_node.trainer import PartnerTrainer
from tests.conftest import ThrowAwayPki

RUN = "run-fault"
ROWS = 1000
SPEC = BottomSpec(
    bin_edges=((-1.0, 0.0, 1.0),) * 3, n_indicators=0, cardinalities=(), embedding_width=4
)


def main() -> None:
    pki_root, port_file = Path(sys.argv[1]), Path(sys.argv[2])
    rng = np.random.default_rng(0)
    features = Encoded(
        numeric=rng.normal(size=(ROWS, 3)).astype(np.float32),
        categorical=np.zeros((ROWS, 0), dtype=np.int64),
    )
    trainer = PartnerTrainer(RUN, features, SPEC)
    trainer.plan_round(1, learning_rate=1e-3)
    service = DataPlaneService()
    service.attach(trainer)
    server, port = create_server(
        service.adder(),
        "127.0.0.1:0",
        ThrowAwayPki(pki_root).tls("partner"),
        allowed_roles=ALLOWED_ROLES,
    )
    server.start()
    written = port_file.with_suffix(".partial")
    written.write_text(str(port))
    written.rename(port_file)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
