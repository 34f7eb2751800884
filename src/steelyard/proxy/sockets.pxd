# Cython declarations augmenting sockets.py (pure Python mode; see http.pxd): write_now is a C call from
# the compiled HTTP path, and send(2) comes from libc.

cimport cython

ctypedef const char *const_chars

cdef extern from "sys/socket.h":
    ssize_t send(int fd, const void *buf, size_t n, int flags) nogil
    int MSG_NOSIGNAL
    int MSG_DONTWAIT

cpdef int socket_fd(object transport) except? -2
@cython.locals(sent=Py_ssize_t, buf=const_chars)
cpdef write_now(object transport, int fd, bytes data)
