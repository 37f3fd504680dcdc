"""`usertunnel up --queues N`: N worker processes over one multi-queue TUN device (not built yet)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .core.params import ConfigError

if TYPE_CHECKING:
    from .service import UpOptions


def up_queues(options: UpOptions) -> int:
    raise ConfigError(f"--queues {options.queues}: multi-queue workers are not built yet; use --queues 1")
