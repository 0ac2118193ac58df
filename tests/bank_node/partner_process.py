"""A partner data plane in a process of its own, for the tests that kill or freeze it.

    python -m tests.bank_node.partner_process CA_BUNDLE CERT KEY PORT_FILE

Serves run `RUN` (round 1 planned) over random rows with the partner's TLS files, then writes
the port it listens on to PORT_FILE and serves until killed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from cobrand.preprocess import Encoded
from cobrand.rpc import TlsFiles, create_server
from cobrand.split_model import BottomSpec
from partner_node.dataplane_service import ALLOWED_ROLES, DataPlaneService
from partner_node.trainer import PartnerTrainer

RUN = "run-fault"
ROWS = 1000
SPEC = BottomSpec(
    bin_edges=((-1.0, 0.0, 1.0),) * 3, n_indicators=0, cardinalities=(), embedding_width=4
)


def main() -> None:
    ca_bundle, cert, key, port_file = map(Path, sys.argv[1:5])
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
        TlsFiles(ca_bundle=ca_bundle, cert=cert, key=key),
        allowed_roles=ALLOWED_ROLES,
    )
    server.start()
    written = port_file.with_suffix(".partial")
    written.write_text(str(port))
    written.rename(port_file)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
