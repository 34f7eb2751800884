# Cython declarations augmenting pool.py (pure Python mode; see http.pxd).

cdef class EndpointPool:
    cdef public str endpoint_id
    cdef public str host
    cdef public object port
    cdef public list idle
    cdef public Py_ssize_t busy
    cdef public Py_ssize_t max_idle
    cdef public bint retired
    cdef public Py_ssize_t connects
    cdef public Py_ssize_t reuses

    cpdef acquire(self)
    cpdef opened(self)
    cpdef release(self, conn, bint reusable, double now)
    cpdef forget(self, conn)
