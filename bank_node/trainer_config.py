"""The settings of the bank's ServerApp process, `TrainerConfig`, read from ``trainer.yaml``.

The ServerApp runs at the bank's SuperLink host, started by Flower for every run; the site
configures it once, in this file, and points the SuperLink's environment at it
(``COBRAND_TRAINER_CONFIG=/srv/cobrand/trainer.yaml``). What varies per run (rounds, learning
rate, seed...) is Flower's run config instead (``bank_node/flower_app/pyproject.toml``).

Example::

    bank: /srv/cobrand/bank.yaml             # the bank node's table, alignment and partner address
    runs_dir: /srv/cobrand/runs              # <runs_dir>/<run id>.jsonl and <runs_dir>/<run id>/
    tls:
      ca_bundle: /srv/cobrand/pki/trust.pem
      cert: /srv/cobrand/pki/bank-trainer.crt  # role "bank-trainer"
      key: /srv/cobrand/pki/bank-trainer.key
    reply_timeout_s: 5                       # a partner silent this long mid-pass counts as gone
    resume: {wait_s: 300, max_resumes: 5}    # how long a run waits for a partner that went away

Every key can also come from the environment, ``COBRAND_TRAINER_<KEY>``, where the file leaves
it out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from bank_node.resume import ResumePolicy
from cobrand.rpc import TlsFiles
from cobrand.settings import ProcessSettings

__all__ = ["TRAINER_CONFIG_ENV", "TrainerConfig"]

TRAINER_CONFIG_ENV = "COBRAND_TRAINER_CONFIG"
"""The environment variable naming the ServerApp's settings file."""


class TrainerConfig(ProcessSettings):
    """Settings of the bank's ServerApp (its trainer).

    Attributes
    ----------
    bank : Path
        The bank node's settings file (``bank.yaml``): federation, schema, table, the data
        directory holding the alignment, and the partner's address.
    runs_dir : Path
        Where each run's journal (``<run id>.jsonl``) and round checkpoints (``<run id>/``) are
        written.
    tls : TlsFiles, optional
        The trainer's certificate (role ``bank-trainer``) for the data plane. Required unless
        `insecure`.
    insecure : bool
        Connect to the partner without TLS, for local development only.
    reply_timeout_s : float
        Seconds the data plane waits for any one partner reply before the partner counts as
        gone: how soon a hung partner is noticed (one that dies breaks the stream at once). A
        reply is one batch through the partner's bottom, milliseconds; the margin covers a
        pass waiting up to 2 s for the previous one to wind down at the partner.
    resume : ResumePolicy
        How long a run waits for a partner that went away before it fails.
    control_timeout_s : float
        Seconds a control-plane message (through Flower) may take to be answered; a status
        call may encode a new alignment's rows at the partner first.
    """

    model_config = SettingsConfigDict(env_prefix="COBRAND_TRAINER_")

    bank: Path
    runs_dir: Path
    tls: TlsFiles | None = None
    insecure: bool = False
    reply_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    control_timeout_s: Annotated[float, Field(gt=0)] = 600.0
    resume: ResumePolicy = ResumePolicy()
