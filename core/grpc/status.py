"""ladle's error tree -> gRPC status codes, in one table.

=========================================  =====================  ==============================
ladle error (HTTP status)                  gRPC status            when
=========================================  =====================  ==============================
InvalidRequestError, InvalidInputError     INVALID_ARGUMENT       bad inputs or parameters
(400), SignatureMismatchError (422)
UnauthorizedError (401)                    UNAUTHENTICATED        missing or wrong bearer token
ModelNotFoundError (404)                   NOT_FOUND              unknown model or version
PayloadTooLargeError (413)                 RESOURCE_EXHAUSTED     more rows than the batcher takes
RateLimitedError (429)                     RESOURCE_EXHAUSTED     over the token's rate
ServerBusyError (503, ``overloaded``)      RESOURCE_EXHAUSTED     the queue is full
ModelNotReadyError, CircuitOpenError       UNAVAILABLE            loading, draining, circuit open
(503)
DeadlineExceededError (504)                DEADLINE_EXCEEDED      the request's deadline passed
RequestCancelledError (499)                CANCELLED              the client went away
RuntimeFailureError, any other 5xx         INTERNAL               a runtime failed on valid input
=========================================  =====================  ==============================

A message over the server's limit is refused by gRPC itself with RESOURCE_EXHAUSTED. The status
message is the HTTP body's ``error``, word for word; the trailing metadata
carries ``ladle-error-code`` (the body's ``code``), ``ladle-model-version`` when a version was
reached and ``retry-after`` (seconds) when the error says when to retry.
"""

from __future__ import annotations

import math
from typing import Any

import grpc

from ..errors import LadleError

__all__ = ["ERROR_CODE_METADATA", "status_of", "trailing_metadata"]

ERROR_CODE_METADATA = "ladle-error-code"

_BY_STATUS: dict[int, Any] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
#: Refinements by ``LadleError.code`` where one HTTP status covers two gRPC meanings.
_BY_CODE: dict[str, Any] = {"overloaded": grpc.StatusCode.RESOURCE_EXHAUSTED}


def status_of(error: LadleError) -> Any:
    """The ``grpc.StatusCode`` of ``error``: a client's mistake is never INTERNAL."""
    code = _BY_CODE.get(error.code)
    if code is not None:
        return code
    code = _BY_STATUS.get(error.status)
    if code is not None:
        return code
    return grpc.StatusCode.INVALID_ARGUMENT if error.status < 500 else grpc.StatusCode.INTERNAL


def trailing_metadata(error: LadleError) -> tuple[tuple[str, str], ...]:
    """The error's code, the version it reached (its headers, lower-cased) and when to retry."""
    pairs = [(ERROR_CODE_METADATA, error.code)]
    pairs.extend((key.lower(), value) for key, value in error.headers.items())
    if error.retry_after is not None:
        pairs.append(("retry-after", str(max(1, math.ceil(error.retry_after)))))
    return tuple(pairs)
