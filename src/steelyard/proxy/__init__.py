"""The asyncio data plane: HTTP/1.1 and TCP proxying.

How the runtime uses it (one `ProxyServer` and one `UpstreamRegistry` per process and event loop):

    registry = UpstreamRegistry()
    proxy = ProxyServer(ProxyConfig())                 # limits/timeouts not tied to a load balancer
    proxy.snapshot = registry.apply(state)             # on every valid configuration (swap by reference;
                                                       # pools of removed endpoints are retired)
    server = await loop.create_server(proxy.protocol_factory(listener), listener.address, listener.port,
                                      reuse_port=True)  # per listener; HTTP or TCP by listener.protocol
    registry.get(upstream_key).on_health_check(endpoint_id, healthy)   # health checker callback
    registry.get(upstream_key).refresh()                               # when next_change_at is due
    server.close(); await proxy.shutdown(drain_timeout=30.0)           # SIGTERM: drain, then abort
    proxy.describe()                                                   # counters for the admin API

Modules: `http` (client and upstream HTTP protocols), `tcp` (TCP tunnels), `pool` (per-endpoint
keep-alive pools), `routing` (snapshot and registry), `server` (ProxyServer, ProxyConfig, timeouts sweep).
"""

from steelyard.proxy.pool import EndpointPool
from steelyard.proxy.routing import EMPTY_SNAPSHOT, Snapshot, UpstreamRegistry
from steelyard.proxy.server import ProxyConfig, ProxyServer, ProxyStats

__all__ = ["EMPTY_SNAPSHOT", "EndpointPool", "ProxyConfig", "ProxyServer", "ProxyStats", "Snapshot",
           "UpstreamRegistry"]
