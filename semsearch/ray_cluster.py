"""Joining a Ray cluster, for the two Ray entry points (``indexer build --engine ray``, ``python -m app --engine ray``).

Ray is optional (``pip install 'semsearch[ray]'``) and imported only inside these functions. Each one
is bounded: an address nobody listens on fails in seconds (``ray.init`` would retry for minutes), and
:func:`check_cpus` says before anything is deployed whether what an application asks for can be
scheduled at all (Ray would otherwise wait for the CPUs forever).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from semsearch.errors import SemsearchError

_EPS = 1e-6  # Ray accounts resources in units of 1e-4


class RayUnavailableError(SemsearchError):
    """Ray is not installed, or the cluster cannot be reached."""

    code = "ray_unavailable"


class RayResourcesError(SemsearchError):
    """The cluster cannot give what an application asks for (it would wait for it forever)."""

    code = "ray_resources"


def import_ray(*parts: str, flag: str = "--engine ray") -> Any:
    """``ray`` (and its ``parts``, e.g. ``"ray.data"``), or a :class:`RayUnavailableError` naming the install."""
    import importlib

    try:
        ray = importlib.import_module("ray")
        for part in parts:
            importlib.import_module(part)
    except ImportError as e:
        raise RayUnavailableError(
            f"{flag} needs Ray: pip install 'semsearch[ray]' (ray[data,serve]); or use --engine local ({e})"
        ) from e
    return ray


def connect(
    ray: Any, address: str | None, object_store_mb: int = 256, num_cpus: int | None = None, then: str = ""
) -> bool:
    """Join the cluster at ``address`` (or RAY_ADDRESS), else start a small local Ray.

    Returns True when this call connected (the caller disconnects again with ``ray.shutdown()``).
    ``then`` is appended to an unreachable address's message (what did not happen, e.g. "nothing was published").
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        probe(address, then=then)
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address is None:
        kwargs |= {"object_store_memory": object_store_mb << 20, "num_cpus": num_cpus}
    try:
        ray.init(address=address, **kwargs)
    except Exception as e:  # ConnectionError, RuntimeError, ValueError (bad address), ...
        where = f"at {address}" if address else "(local)"
        raise RayUnavailableError(f"cannot reach the Ray cluster {where}: {type(e).__name__}: {e}") from e
    return True


def probe(address: str, timeout_s: float = 10.0, then: str = "") -> None:
    """Fail fast on a ``host:port`` nobody listens on (``ray.init`` would retry for minutes)."""
    if address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return
    except (OSError, ValueError) as e:
        raise RayUnavailableError(
            f"cannot reach the Ray cluster at {address}: {e}; is it running (ray status), and is the address "
            "the head's GCS address (host:6379 by default)?" + (f" {then}" if then else "")
        ) from e


@dataclass(frozen=True)
class CpuFit:
    """What the cluster has against what is asked: ``fits`` or not, with the numbers for the message."""

    needed: float
    free: float
    nodes: tuple[float, ...]  # free CPUs per alive node
    fits: bool
    unplaced: tuple[str, ...]  # the actors no node could take (first-fit, largest first)


def free_cpus_per_node(ray: Any) -> list[float]:
    """Free CPUs of each alive node (its total minus what running actors and tasks hold)."""
    try:
        from ray._private.state import available_resources_per_node

        return [float(r.get("CPU", 0.0)) for r in available_resources_per_node().values()]
    except Exception:  # a private API: fall back to the totals, scaled by what is free cluster-wide
        totals = [float(n.get("Resources", {}).get("CPU", 0.0)) for n in ray.nodes() if n.get("Alive")]
        total, free = sum(totals), float(ray.available_resources().get("CPU", 0.0))
        return [t * free / total for t in totals] if total > 0 else totals


def check_cpus(asks: Sequence[tuple[str, float]], nodes: Sequence[float]) -> CpuFit:
    """Whether actors asking ``(name, cpus)`` can all be placed on nodes with ``nodes`` free CPUs (an actor's
    CPUs come from one node): first-fit, largest first, which is exact for the few equal asks used here."""
    free = list(nodes)
    unplaced: list[str] = []
    for name, cpus in sorted(asks, key=lambda a: -a[1]):
        slot = next((i for i, f in enumerate(free) if f + _EPS >= cpus), None)
        if slot is None:
            unplaced.append(name)
        else:
            free[slot] -= cpus
    needed = sum(c for _, c in asks)
    return CpuFit(needed, sum(nodes), tuple(nodes), not unplaced, tuple(unplaced))
