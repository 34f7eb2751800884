# Cython declarations augmenting server.py (pure Python mode; see http.pxd): what the request path reads
# and calls on the server (the clock, the pools, the counters, flush_later) becomes C field access and C
# calls from the compiled proxy.

cimport cython


cdef class Writer:
    cpdef flush(self)


@cython.final
cdef class ProxyStats:
    cdef public Py_ssize_t requests
    cdef public list responses_by_class
    cdef public dict local_responses
    cdef public Py_ssize_t retries
    cdef public Py_ssize_t timeouts
    cdef public Py_ssize_t tunnels
    cdef public Py_ssize_t http_connections_total
    cdef public Py_ssize_t tcp_connections_total
    cdef public Py_ssize_t upstream_connect_failures
    cdef public Py_ssize_t connections_refused


@cython.final
cdef class ProxyServer:
    cdef dict __dict__  # tests replace methods on an instance (open_upstream); C calls never see those
    cdef public object config
    cdef public object _snapshot
    cdef public dict pools
    cdef public set http_connections
    cdef public set tcp_tunnels
    cdef public ProxyStats stats
    cdef public object access_log
    cdef public bint closing
    cdef public double now
    cdef public object _loop
    cdef public object _sweep
    cdef public set _tasks
    cdef public list _unflushed
    cdef public double _refusals_logged_at

    cpdef flush_later(self, writer)
    @cython.locals(writers=list, writer=Writer)
    cpdef _flush_unflushed(self)
