"""The build under test: `make test` runs the suite on the compiled request path (then its tests again on
plain Python, see the Makefile). Without a compiler or Cython the install falls back to plain Python,
which works but is ~35 % dearer per request; this test says so instead of letting the figures drift."""

from __future__ import annotations

import os

import pytest

from conftest import HOT_PATH, compiled_origin


@pytest.mark.skipif(os.environ.get("STEELYARD_EXPECT_PURE") == "1", reason="the pure pass")
@pytest.mark.parametrize("name", HOT_PATH)
def test_the_request_path_is_compiled(name: str) -> None:
    assert compiled_origin(name) is not None, (
        f"{name} runs as plain Python: the install found no C compiler or no Cython (`make compiled`)")
