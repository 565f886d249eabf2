"""The zlib dictionary of SPDY/3 header compression (spec draft 3, section 2.6.10.1).

Every SPDY/3 and SPDY/3.1 header block is deflated with this preset dictionary: a run of
header words, each preceded by its length as a 32-bit big-endian integer, then raw status
codes and common values. 1423 bytes; zlib names it by its Adler-32, 0xe3c6a7c2.
"""

from __future__ import annotations

_WORDS = (
    "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset",
    "accept-encoding", "accept-language", "accept-ranges", "age", "allow", "authorization",
    "cache-control", "connection", "content-base", "content-encoding", "content-language",
    "content-length", "content-location", "content-md5", "content-range", "content-type",
    "date", "etag", "expect", "expires", "from", "host", "if-match", "if-modified-since",
    "if-none-match", "if-range", "if-unmodified-since", "last-modified", "location",
    "max-forwards", "pragma", "proxy-authenticate", "proxy-authorization", "range", "referer",
    "retry-after", "server", "te", "trailer", "transfer-encoding", "upgrade", "user-agent",
    "vary", "via", "warning", "www-authenticate", "method", "get", "status", "200 OK",
    "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin",
)  # fmt: skip

_STATUS_CODES = (
    "100", "101", "201", "202", "205", "206", "300", "302", "303", "304", "305", "306", "307",
    "402", "405", "406", "407", "408", "409", "410", "411", "412", "413", "414", "415", "416",
    "417", "502", "504", "505",
)  # fmt: skip

_STATUS_LINES = (
    "203 Non-Authoritative Information", "204 No Content", "301 Moved Permanently",
    "400 Bad Request", "401 Unauthorized", "403 Forbidden", "404 Not Found",
    "500 Internal Server Error", "501 Not Implemented", "503 Service Unavailable",
)  # fmt: skip

_VALUES = (
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,"
    "text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdch"
    "charset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)


def _build() -> bytes:
    words = b"".join(len(word).to_bytes(4, "big") + word.encode() for word in _WORDS)
    tail = "".join(_STATUS_CODES) + "".join(_STATUS_LINES) + _VALUES
    return words + tail.encode()


SPDY3_DICTIONARY: bytes = _build()
