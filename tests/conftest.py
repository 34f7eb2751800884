"""Fixtures shared by several test modules."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from kube_support import KubeApi


@pytest.fixture
def api() -> Iterator[KubeApi]:
    """The test Kubernetes API server on 127.0.0.1 (tests/kube_support.py), with our CRDs installed."""
    from kube_support import kube_api  # imported when a test asks for it, not at every collection

    with kube_api() as server:
        yield server
