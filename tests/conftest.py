"""Fixtures shared by several test modules."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from kube_support import KubeApi


# The request path's modules that setup.py compiles with Cython (each has a .pxd beside its .py).
HOT_PATH = ("steelyard.proxy.http", "steelyard.proxy.pool", "steelyard.proxy.server",
            "steelyard.proxy.sockets", "steelyard.proxy.tcp", "steelyard.runtime.upstream")


def compiled_origin(name: str) -> Path | None:
    """The compiled module that imports in place of `name`'s .py, if there is one."""
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin is not None, name
    origin = Path(spec.origin)
    return origin if origin.suffix == ".so" else None


def pytest_configure(config: pytest.Config) -> None:
    """Never test a stale build: a compiled module shadows its .py, so an edit not yet compiled would
    go untested. And the pure pass of `make test` (STEELYARD_EXPECT_PURE=1) must really be pure."""
    for name in HOT_PATH:
        origin = compiled_origin(name)
        if origin is None:
            continue
        if os.environ.get("STEELYARD_EXPECT_PURE") == "1":
            pytest.exit(f"{name} is compiled ({origin}) in the run meant for plain Python", returncode=2)
        source = origin.parent / (name.rsplit(".", 1)[1] + ".py")
        for path in (source, source.with_suffix(".pxd")):
            if path.stat().st_mtime > origin.stat().st_mtime:
                pytest.exit(f"{origin.name} is older than {path.name}: run `make compiled` (or `make pure`)",
                            returncode=2)


@pytest.fixture
def api() -> Iterator[KubeApi]:
    """The test Kubernetes API server on 127.0.0.1 (tests/kube_support.py), with our CRDs installed."""
    from kube_support import kube_api  # imported when a test asks for it, not at every collection

    with kube_api() as server:
        yield server
