# Cython declarations augmenting http.py (pure Python mode): when a compiler is there at install, http.py
# is compiled with these (setup.py); without one it runs as the plain Python it is. The three classes of the
# request path become extension types: their attributes are C fields (typed where the type is fixed) and
# the methods the request path calls from inside this module are cpdef, so those calls are C calls.
#
# Rules this file imposes on http.py: every attribute of these classes is listed here (no others can be
# set); the classes derive from nothing but server.Writer (uvloop and asyncio duck-type protocols); an
# attribute typed bint, Py_ssize_t, int or double never holds None; HttpRequest's defaults are set in
# __cinit__ when compiled.

cimport cython
from libc.stdint cimport int32_t, uint8_t, uint16_t

from steelyard.proxy.pool cimport EndpointPool
from steelyard.proxy.server cimport ProxyServer, Writer
from steelyard.proxy.sockets cimport socket_fd, write_now
from steelyard.runtime.upstream cimport Attempt, UpstreamRuntime

# The common response head's scan (see _scan_common_head): C loops over the head's bytes.
ctypedef const unsigned char *chars
ctypedef const char *cchars
@cython.locals(k=Py_ssize_t)
cdef bint _lower_is(chars data, Py_ssize_t start, chars name, Py_ssize_t size) noexcept
@cython.locals(first=int)
cdef int _scan_kind(chars data, Py_ssize_t start, Py_ssize_t size) noexcept
@cython.locals(head=chars, first_cr=chars, connection_seen=bint, dated=bint, kept=Py_ssize_t, line=Py_ssize_t,
               last=Py_ssize_t, colon=Py_ssize_t, eol=Py_ssize_t, kind=int, value=Py_ssize_t,
               value_end=Py_ssize_t, k=Py_ssize_t)
cpdef object _scan_common_head(bytes data, Py_ssize_t end, list parts)
cdef extern from "string.h":  # (memmem: pyconfig.h defines _GNU_SOURCE)
    const void *memchr(const void *s, int c, size_t n)
    const void *memmem(const void *haystack, size_t haystacklen, const void *needle, size_t needlelen)
@cython.locals(head=chars, found=chars)
cdef Py_ssize_t _head_end(bytes data) noexcept


# llhttp itself (the parser httptools wraps), driven from C by _LLRequestParser and _LLResponseParser: its
# callbacks reach the protocols' on_* methods as C calls. The sources come from the installed httptools
# release's source distribution (tools/fetch_llhttp.py), built into this module by setup.py.
cdef extern from "llhttp.h":
    ctypedef struct llhttp_t:
        int32_t error
        void *data
        uint8_t method
        uint8_t http_major
        uint8_t http_minor
        uint8_t upgrade
        uint16_t status_code
    ctypedef int (*llhttp_data_cb)(llhttp_t *, const char *, size_t) noexcept
    ctypedef int (*llhttp_cb)(llhttp_t *) noexcept
    ctypedef struct llhttp_settings_t:
        llhttp_cb on_message_begin
        llhttp_data_cb on_url
        llhttp_data_cb on_header_field
        llhttp_data_cb on_header_value
        llhttp_cb on_headers_complete
        llhttp_data_cb on_body
        llhttp_cb on_message_complete
        llhttp_cb on_chunk_header
        llhttp_cb on_chunk_complete
    ctypedef enum llhttp_type_t:
        HTTP_REQUEST
        HTTP_RESPONSE
    ctypedef enum llhttp_errno_t:
        HPE_OK
        HPE_PAUSED_UPGRADE
        HPE_USER
        HPE_INVALID_METHOD
        HPE_INVALID_URL
        HPE_INVALID_STATUS
        HPE_CB_MESSAGE_BEGIN
        HPE_CB_HEADERS_COMPLETE
        HPE_CB_MESSAGE_COMPLETE
        HPE_CB_CHUNK_HEADER
        HPE_CB_CHUNK_COMPLETE
    ctypedef int llhttp_method_t
    void llhttp_init(llhttp_t *parser, llhttp_type_t type, const llhttp_settings_t *settings)
    void llhttp_settings_init(llhttp_settings_t *settings)
    llhttp_errno_t llhttp_execute(llhttp_t *parser, const char *data, size_t len)
    int llhttp_should_keep_alive(const llhttp_t *parser)
    void llhttp_resume_after_upgrade(llhttp_t *parser)
    const char *llhttp_get_error_reason(const llhttp_t *parser)
    void llhttp_set_error_reason(llhttp_t *parser, const char *reason)
    const char *llhttp_get_error_pos(const llhttp_t *parser)
    const char *llhttp_method_name(llhttp_method_t method)
ctypedef llhttp_t *llhttp_p

cdef class _LLParser:
    cdef llhttp_t ll
    cdef llhttp_settings_t settings
    cdef object last_error
    @cython.locals(ll=llhttp_p, start=cchars, err=llhttp_errno_t, reason=cchars,
                   offset=Py_ssize_t)
    cpdef feed_data(self, bytes data)
    cpdef bint should_keep_alive(self)
    cpdef str get_http_version(self)
    cdef int _failed(self, object exc, const char *reason) noexcept

cdef class _LLRequestParser(_LLParser):
    cdef HttpProxyProtocol proto
    cdef bint live
    cdef bytes name
    cdef bytes value
    cpdef bytes get_method(self)
    cdef _header_done(self)

cdef class _LLResponseParser(_LLParser):
    cdef UpstreamConnection proto
    cpdef int get_status_code(self)

@cython.locals(parser=_LLRequestParser)
cdef int _request_on_url(llhttp_t *ll, const char *at, size_t length) noexcept
@cython.locals(parser=_LLRequestParser)
cdef int _request_on_header_field(llhttp_t *ll, const char *at, size_t length) noexcept
@cython.locals(parser=_LLRequestParser)
cdef int _request_on_header_value(llhttp_t *ll, const char *at, size_t length) noexcept
@cython.locals(parser=_LLRequestParser)
cdef int _request_on_headers_complete(llhttp_t *ll) noexcept
@cython.locals(parser=_LLRequestParser)
cdef int _request_on_body(llhttp_t *ll, const char *at, size_t length) noexcept
@cython.locals(parser=_LLRequestParser)
cdef int _request_on_message_complete(llhttp_t *ll) noexcept
@cython.locals(parser=_LLRequestParser)
cdef int _request_on_chunk_header(llhttp_t *ll) noexcept
@cython.locals(parser=_LLRequestParser)
cdef int _request_on_chunk_complete(llhttp_t *ll) noexcept
@cython.locals(parser=_LLResponseParser)
cdef int _response_on_message_begin(llhttp_t *ll) noexcept
@cython.locals(parser=_LLResponseParser)
cdef int _response_on_headers_complete(llhttp_t *ll) noexcept
@cython.locals(parser=_LLResponseParser)
cdef int _response_on_body(llhttp_t *ll, const char *at, size_t length) noexcept
@cython.locals(parser=_LLResponseParser)
cdef int _response_on_message_complete(llhttp_t *ll) noexcept


cdef class HttpRequest:
    cdef public bytes url
    cdef public bytes method
    cdef public bint http11
    cdef public bint keep_alive
    cdef public bint keep_plain
    cdef public bint upgrade
    cdef public bint skipped_body
    cdef public bint is_head
    cdef public bint idempotent
    cdef public int body_kind
    cdef public object content_length  # (an int, possibly beyond 64 bits: llhttp takes any digits)
    cdef public bytes head
    cdef public bint request_complete
    cdef public Py_ssize_t body_bytes
    cdef public bint body_sent
    cdef public bint head_sent
    cdef public UpstreamRuntime runtime
    cdef public Attempt attempt
    cdef public UpstreamConnection conn
    cdef public Py_ssize_t retries_left
    cdef public bint response_started
    cdef public object reject
    cdef public bint cancelled
    cdef public Attempt next_attempt
    cdef public bytes tunnel_data
    cdef public bint needs_host
    cdef public bint resent
    cdef public double logged_at
    cdef public Py_ssize_t bytes_out
    cdef public object pending
    cdef public tuple tried
    cdef public list fields
    cdef public bytes host_field
    cdef public Py_ssize_t host_count
    cdef public bytes length_field
    cdef public bytes coding_field
    cdef public bytes connection_field
    cdef public bytes upgrade_field
    cdef public bytes xff_field
    cdef public Py_ssize_t other_fields
    cdef public Py_ssize_t other_bytes
    cdef public Py_ssize_t trailer_fields
    cdef public Py_ssize_t trailer_bytes
    cdef public Py_ssize_t head_slack


cdef class HttpProxyProtocol(Writer):
    cdef public int _fd
    cdef public object _client_ip_bytes
    cdef public Py_ssize_t _completed
    cdef public object _fields  # a list, or the trailer sink (a list subclass whose += drops)
    cdef public bytes _forward_tail
    cdef public bytes _forwarded
    cdef public double _header_timeout
    cdef public bytes _host_line
    cdef public object _host_seen
    cdef public double _keepalive_timeout
    cdef public Py_ssize_t _max_head
    cdef public Py_ssize_t _max_headers
    cdef public Py_ssize_t _max_uri
    cdef public UpstreamRuntime _only_route
    cdef public Py_ssize_t _head_left
    cdef public Py_ssize_t _read_len
    cdef public object _routes
    cdef public object _watch
    cdef public UpstreamConnection _watch_conn
    cdef public double _watch_since
    cdef public Py_ssize_t _watch_bytes
    cdef public double _linger_until
    cdef public object client_ip
    cdef public object out_append
    cdef public bint closed
    cdef public bint closing
    cdef public object config
    cdef public HttpRequest current
    cdef public bint eof_in
    cdef public object listener_key
    cdef public list out
    cdef public _LLRequestParser parser  # (httptools' parser when running as plain Python)
    cdef public HttpRequest parsing
    cdef public int paused
    cdef public object queue
    cdef public ProxyServer server
    cdef public object transport
    cdef public UpstreamConnection tunnel
    cdef public double tunnel_idle_timeout
    cdef public bint write_paused

    cpdef on_url(self, bytes url)
    cpdef on_header(self, bytes name, bytes value)
    cpdef on_headers_complete(self)
    cpdef on_body(self, bytes body)
    cpdef on_message_complete(self)
    cpdef _regenerate_head(self, HttpRequest req, bytes method, bytes url, list kept, bint keep_alive)
    @cython.locals(conn=UpstreamConnection, pool=EndpointPool, runtime=UpstreamRuntime, attempt=Attempt)
    cpdef _start(self, HttpRequest req)
    @cython.locals(pool=EndpointPool)
    cpdef _dispatch(self, HttpRequest req, Attempt attempt)
    cpdef _send(self, HttpRequest req, UpstreamConnection conn)
    cpdef retry_attempt(self, HttpRequest req)
    cpdef bint _retry(self, HttpRequest req, Attempt attempt=*) except -1
    cpdef upstream_broken(self, HttpRequest req)
    cpdef _next(self)
    cpdef _respond_local(self, HttpRequest req, int status, str text)
    cpdef log_access(self, HttpRequest req, int status)
    cpdef _abandon(self, HttpRequest req)
    cpdef _abandon_all(self)
    cpdef flush(self)
    cpdef _close(self)
    cpdef _pause(self, int reason)
    cpdef _resume(self, int reason)
    cpdef upstream_write_full(self, bint full)


cdef class UpstreamConnection(Writer):
    cdef public int _fd
    cdef public Py_ssize_t _max_head_end
    cdef public Py_ssize_t _max_headers
    cdef public object body_to
    cdef public bint chunked_in
    cdef public bint chunked_out
    cdef public HttpProxyProtocol client
    cdef public bint close_delimited
    cdef public bint closed
    cdef public object config
    cdef public object connection
    cdef public object content_length
    cdef public bytes data
    cdef public bint discard
    cdef public bint eof_in
    cdef public bytes head_buf
    cdef public Py_ssize_t head_bytes
    cdef public bint headers_done
    cdef public list headers_out
    cdef public double idle_since
    cdef public bint interim
    cdef public bint keep_client
    cdef public double last_read
    cdef public bint message_done
    cdef public _LLResponseParser parser  # (httptools' parser when running as plain Python)
    cdef public EndpointPool pool
    cdef public bint read_paused
    cdef public HttpRequest req
    cdef public ProxyServer server
    cdef public int status
    cdef public object transport
    cdef public bint tunnel
    cdef public bytes unsent
    cdef public object upgrade
    cdef public bint upstream_keep_alive
    cdef public object weight_hint
    cdef public bint write_full

    cpdef on_message_begin(self)
    cpdef on_headers_complete(self)
    cpdef on_body(self, bytes body)
    cpdef on_message_complete(self)
    cpdef close(self)
    cpdef flush(self)
    cpdef abandon(self)
    cpdef pause_reading(self)
    cpdef resume_reading(self)
    cpdef list _parse_fields(self, bytes block)
    cpdef _interim(self, HttpProxyProtocol client, HttpRequest req, list parts)
    cpdef _body(self, bytes body)
    @cython.locals(pool=EndpointPool, client=HttpProxyProtocol, req=HttpRequest, attempt=Attempt)
    cpdef _finish(self)
    cpdef _release(self, bint reusable)
