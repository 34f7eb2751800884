# Cython declarations augmenting tcp.py (pure Python mode; see http.pxd): both ends of a tunnel become
# extension types, so a chunk read on one side reaches the peer transport's write() through C fields.
#
# Rules this file imposes on tcp.py: every attribute of these classes is listed here (and in its
# __slots__); the classes derive from nothing (uvloop and asyncio duck-type protocols); an attribute typed
# bint, Py_ssize_t or double never holds None. (server.py imports this module at load and this one cimports
# ProxyServer: a compiled module creates its own types before it imports others', so either order loads.)

cimport cython

from steelyard.proxy.server cimport ProxyServer
from steelyard.runtime.upstream cimport Attempt, UpstreamRuntime

cdef class TcpTunnel


cdef class _Side:
    cdef public TcpTunnel tunnel
    cdef public _Side peer
    cdef public object transport
    cdef public bint eof_in
    cdef public bint lost
    cdef public list early
    cdef public object peer_transport
    cdef public bint active
    cdef public bint write_full


@cython.final
cdef class TcpTunnel:
    cdef public ProxyServer server
    cdef public object listener_key
    cdef public _Side client
    cdef public _Side upstream
    cdef public Attempt attempt
    cdef public UpstreamRuntime runtime
    cdef public list tried
    cdef public Py_ssize_t retries_left
    cdef public double last_activity
    cdef public bint closed
    cdef public bint failed

    @cython.locals(client=_Side, runtime=UpstreamRuntime)
    cpdef start(self)
    cpdef _connect(self, Attempt attempt)
    cpdef side_lost(self, _Side side, exc)
    @cython.locals(side=_Side)
    cpdef close(self, bint abort=*)
    @cython.locals(runtime=UpstreamRuntime, client=_Side, upstream=_Side)
    cpdef check_timeouts(self, double now)


@cython.final
cdef class TcpProxyProtocol(_Side):
    pass
