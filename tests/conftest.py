"""Test-wide set-up: an offline Flower environment for every test."""

import os
import tempfile

# Before anything imports flwr: no telemetry, no update check, a throw-away FLWR_HOME.
os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
os.environ["FLWR_DISABLE_UPDATE_CHECK"] = "1"
os.environ["FLWR_HOME"] = tempfile.mkdtemp(prefix="cobrand-flwr-home-")
