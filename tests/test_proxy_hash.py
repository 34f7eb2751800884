"""Hash strategies end to end on 127.0.0.1: the proxy hands each strategy the key it hashes on."""

from __future__ import annotations

import pytest
import uvloop

from proxy_support import Harness, make_state, start_backends

pytestmark = pytest.mark.filterwarnings("ignore:Overriding the .event_loop_policy. fixture")


@pytest.fixture(scope="module")
def event_loop_policy() -> uvloop.EventLoopPolicy:
    return uvloop.EventLoopPolicy()


@pytest.mark.parametrize("policy", [
    {"strategy": {"type": "SourceIPHash"}},  # no hashOn: the client address is its key
    {"strategy": {"type": "RingHash", "hashOn": {"sourceIP": {}}}},
    {"strategy": {"type": "Maglev", "hashOn": {"sourceIP": {}}}},
])
async def test_one_client_address_sticks_to_one_endpoint(policy: dict[str, object]) -> None:
    backends = await start_backends("a", "b", "c")
    async with Harness(make_state(backends, policy=policy)) as h:
        client = await h.connect()
        names = {(await client.request()).text for _ in range(9)}
        assert len(names) == 1, names  # round robin would give a, b and c
        client.close()
    for b in backends:
        await b.close()


async def test_header_key_sticks_and_a_request_without_it_goes_round_robin() -> None:
    backends = await start_backends("a", "b", "c")
    policy = {"strategy": {"type": "RingHash", "hashOn": {"header": "X-User"}}}
    async with Harness(make_state(backends, policy=policy)) as h:
        client = await h.connect()
        keyed = {(await client.request(headers="X-User: alice\r\n")).text for _ in range(6)}
        assert len(keyed) == 1
        unkeyed = [(await client.request()).text for _ in range(6)]
        assert set(unkeyed) == {"a", "b", "c"}
        client.close()
    for b in backends:
        await b.close()
