"""The network options of a config (``NetOption``): which registered net, its options, and their resolution.

Every config that trains or distils through one network declares it by mixing ``NetOption`` in: the ``net``
field (left to ``auto``, filled by ``fill_net`` with the config's default and the reason for it) and
``net_kwargs`` (``--net-arg KEY=VALUE``). ``fill_net`` also fits a ConvNet's depth to the input when the options
do not give one, and records why (``nets.registry.fit_net_to_input``: 8x8 digits keep a 2x2 map at depth 2).
A config words the fields for itself with ``FIELD_DOCS`` / ``AUTO_DOCS`` (``distilset.config.Config``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from distilset.config import CHOICES, FLAG, auto
from distilset.nets.registry import fit_net_to_input, list_nets


@dataclass(frozen=True)
class NetOption:
    """Mixin of configs with one network: ``net`` (auto) and ``net_kwargs``."""

    net: str | None = auto("the method's network", **{CHOICES: list_nets})
    """The network."""
    net_kwargs: dict = field(default_factory=dict, metadata={FLAG: "--net-arg"})
    """Network options as KEY=VALUE, e.g. width=32 (a ConvNet gets the depth its input allows unless given)."""

    def fill_net(
        self, image_shape: tuple[int, ...], default: tuple[str, str], **more: tuple[Any, str]
    ) -> tuple[Any, dict[str, str]]:
        """``fill`` with ``net`` defaulting to ``default`` (name, why) and the ``more`` auto fields, then the net's
        options fitted to inputs of ``image_shape``; returns the config and a reason per filled field."""
        cfg, notes = self.fill(net=default, **more)
        kwargs, fitted = fit_net_to_input(cfg.net, cfg.net_kwargs, tuple(image_shape))
        if fitted:
            cfg, notes = dataclasses.replace(cfg, net_kwargs=kwargs), {**notes, "net_kwargs": fitted}
        return cfg, notes
