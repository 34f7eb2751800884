# Cython declarations augmenting upstream.py (pure Python mode; see proxy/http.pxd): the pick and its
# report, once per request, become C calls from the compiled proxy.

cimport cython


@cython.final
cdef class EndpointStats:
    cdef public Py_ssize_t requests
    cdef public Py_ssize_t failures
    cdef public list by_class
    cdef public object latency


@cython.final
cdef class Attempt:
    cdef public object endpoint
    cdef public str endpoint_id
    cdef public UpstreamRuntime _runtime
    cdef public object _picked
    cdef public object _on_done
    cdef public double _started
    cdef public EndpointStats _stats

    cpdef done(self, bint ok, status=*, weight_hint=*)
    @cython.locals(stats=EndpointStats, runtime=UpstreamRuntime, now=double, latency=double)
    cpdef report(self, bint ok, Py_ssize_t status_class, weight_hint=*)
    cpdef cancel(self)
    cpdef abandoned(self)


@cython.final
cdef class UpstreamRuntime:
    cdef dict __dict__  # anything not listed here (tests, later additions) still works
    cdef public object clock
    cdef public object rng
    cdef public object upstream
    cdef public object tracker
    cdef public object _strategy
    cdef public object strategy_on_done
    cdef public bint hears_outcomes
    cdef public dict stats
    cdef public Py_ssize_t requests
    cdef public Py_ssize_t no_endpoint
    cdef public Py_ssize_t retries
    cdef public Py_ssize_t timeouts
    cdef public tuple _usable
    cdef public object _next_change
    cdef public object _generation
    cdef public object _looks
    cdef public bint _none_usable
    cdef public Py_ssize_t retry_attempts
    cdef public bint retry_on_connect
    cdef public bint retry_on_reset
    cdef public frozenset retry_statuses
    cdef public object connect_timeout
    cdef public object request_timeout
    cdef public object idle_timeout
    cdef public object weight_header
    cdef public object hash_header
    cdef public object hash_cookie
    cdef public bint hash_source_ip
    cdef public frozenset plain_statuses
    cdef public object name
    cdef public bint needs_context
    cdef public bint tracker_listens
    cdef public dict _endpoints
    cdef public dict _known

    @cython.locals(stats=EndpointStats, attempt=Attempt, known=tuple)
    cpdef pick(self, ctx=*, exclude=*)
