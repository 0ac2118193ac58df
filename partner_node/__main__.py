"""``python -m partner_node``: the partner's node commands without the rest of cobrand's CLI."""

import logging

from cobrand.offline import configure_offline_flower

configure_offline_flower()
logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")

from partner_node.cli import app  # noqa: E402

app(prog_name="partner_node")
