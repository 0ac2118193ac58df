"""The partner's thin ClientApp: nothing heavy to import (Flower starts it for every message), and
its node config read with each problem named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cobrand.errors import ConfigError
from partner_node.flower_client.client_app import HandOffSettings

ROOT = Path(__file__).resolve().parents[2]


def test_the_client_app_imports_neither_torch_nor_the_partners_data_stack() -> None:
    probe = (
        "import sys, partner_node.flower_client.client_app; "
        "print(sorted(m for m in ('torch', 'pyarrow', 'partner_node.trainer') if m in sys.modules))"
    )

    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )

    assert loaded.stdout.strip() == "[]"


def test_the_node_config_names_the_partner_node_and_the_client_apps_certificate() -> None:
    settings = HandOffSettings.from_node_config(
        {
            "partner-node": "127.0.0.1:7443",
            "ca-bundle": "/pki/trust.pem",
            "cert": "/pki/partner-flower.crt",
            "key": "/pki/partner-flower.key",
            "call-timeout-s": 20.0,
        }
    )

    assert settings.partner_node == "127.0.0.1:7443"
    assert settings.tls.cert == Path("/pki/partner-flower.crt")
    assert settings.call_timeout_s == 20.0
    assert settings.server_name is None


def test_a_node_config_with_a_missing_or_misspelt_key_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError) as refused:
        HandOffSettings.from_node_config(
            {"partner-nod": "127.0.0.1:7443", "ca-bundle": "a", "cert": "b", "key": "c"}
        )

    assert "missing key 'partner-node'" in str(refused.value)
    assert "unknown key 'partner-nod'" in str(refused.value)
