"""One error hierarchy for ladle; every error carries the HTTP status it maps to.

LadleError                      500  base class; a bug or a dead backend
├── ConfigError                 500  invalid configuration, raised at start
├── PluginError                 500  plugin discovery and registration
│   ├── DuplicatePluginError         two plugins register the same name
│   ├── PluginNotFoundError          no enabled plugin has that name
│   └── MissingDependencyError       the plugin's optional dependency is absent
├── ClientError                 4xx  the request is wrong; the server is fine
│   ├── InvalidRequestError     400  malformed body, unknown parameter
│   ├── InvalidInputError       400  a runtime refused the input values
│   ├── UnauthorizedError       401  missing or wrong bearer token
│   ├── ModelNotFoundError      404  unknown model or version
│   ├── PayloadTooLargeError    413  more rows than the batcher accepts
│   ├── UnsupportedMediaTypeError 415  a body that is not JSON (or binary tensors)
│   ├── SignatureMismatchError  422  tensor names, types or shapes off the signature
│   └── RequestCancelledError   499  the client went away before the request ran
├── ServerBusyError             503  queue full or predicted to miss its deadline; Retry-After
│   └── TooManyRequestsError    429  the same, where the model is configured to answer 429
├── ModelNotReadyError          503  loading, draining or failed
├── DeadlineExceededError       504  the request's deadline passed
└── RuntimeFailureError         500  a runtime raised on valid input
    └── InstanceFailedError     500  the instance (or its worker process) died
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

__all__ = [
    "PRIVATE_DETAILS",
    "ClientError",
    "ConfigError",
    "DeadlineExceededError",
    "DuplicatePluginError",
    "InstanceFailedError",
    "InvalidInputError",
    "InvalidRequestError",
    "LadleError",
    "MissingDependencyError",
    "ModelNotFoundError",
    "ModelNotReadyError",
    "PayloadTooLargeError",
    "PluginError",
    "PluginNotFoundError",
    "RequestCancelledError",
    "RuntimeFailureError",
    "ServerBusyError",
    "SignatureMismatchError",
    "TooManyRequestsError",
    "UnauthorizedError",
    "UnsupportedMediaTypeError",
    "public_text",
]

#: Detail keys that describe the server rather than the request: logged, never sent to a client.
PRIVATE_DETAILS = frozenset({"file", "path", "traceback", "pid"})
# An absolute file-system path: a '/' not preceded by a name character, then one or more segments
# (ladle's own URL paths, /v2/..., /api/..., are left as they are).
_SEGMENT = r"[^\s/'\"`:,;()\[\]{}<>|]+"
_SERVER_PATH = re.compile(
    rf"(?<![\w.~/-])/(?!(?:v1|v2|api|metrics|openapi\.json)(?:/|\b))(?:{_SEGMENT}/)*({_SEGMENT})"
)


def public_text(text: str) -> str:
    """``text`` with every absolute server path cut to its last segment (``/srv/m/1/x.onnx`` ->
    ``…/x.onnx``): what a client may read of a message written for the operator."""
    if "/" not in text:
        return text
    return _SERVER_PATH.sub(r"…/\1", text)


def _public(value: Any) -> Any:
    if isinstance(value, str):
        return public_text(value)
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items() if k not in PRIVATE_DETAILS}
    if isinstance(value, list | tuple):
        return [_public(v) for v in value]
    return value


class LadleError(Exception):
    """Base of every ladle error; ``status`` is the HTTP status it maps to."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    #: Seconds after which a retry may succeed (sent as ``Retry-After``); ``None``: do not say.
    retry_after: float | None = None
    #: Set once the answer this error became was counted by the metrics (``ladle.Admission``).
    counted: bool = False

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        #: Response headers the error adds (e.g. which version answered).
        self.headers: dict[str, str] = {}

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep details and attributes when an error crosses a process boundary.
        return (_rebuild, (type(self), self.message, dict(self.__dict__)))

    def to_dict(self) -> dict[str, Any]:
        """The JSON error body a client gets: ``{"error": message, "code": ..., **details}``, naming
        the model, version, input or parameter but no server path or process (``PRIVATE_DETAILS``
        are left out, absolute paths cut to their last segment; ``log_detail`` has it all)."""
        body: dict[str, Any] = {"error": public_text(self.message), "code": self.code}
        for key, value in self.details.items():
            if key not in PRIVATE_DETAILS:
                body[key] = _public(value)
        return body

    def log_detail(self) -> str:
        """Everything the error knows, for the server log (paths, process ids, tracebacks)."""
        extra = "".join(f"\n  {key}: {value}" for key, value in self.details.items())
        return f"{type(self).__name__} ({self.status} {self.code}): {self.message}{extra}"


class ConfigError(LadleError):
    """Invalid configuration; the message names the file, the key and what was expected."""

    code = "config_error"


class PluginError(LadleError):
    code = "plugin_error"


class DuplicatePluginError(PluginError):
    code = "duplicate_plugin"


class PluginNotFoundError(PluginError):
    code = "plugin_not_found"


class MissingDependencyError(PluginError):
    """A plugin was used while its optional dependency is not installed."""

    code = "missing_dependency"


class ClientError(LadleError):
    status = 400
    code = "bad_request"


class InvalidRequestError(ClientError):
    status = 400
    code = "invalid_request"


class InvalidInputError(ClientError):
    """Raised by a runtime when input values are unacceptable; isolated to the item that caused it."""

    status = 400
    code = "invalid_input"


class UnauthorizedError(ClientError):
    """A missing or wrong bearer token; the answer says which scheme to use (``WWW-Authenticate``)."""

    status = 401
    code = "unauthorized"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message, **details)
        self.headers["WWW-Authenticate"] = "Bearer"


class ModelNotFoundError(ClientError):
    status = 404
    code = "model_not_found"


class PayloadTooLargeError(ClientError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaTypeError(ClientError):
    """The body's ``Content-Type`` is not one the endpoint reads."""

    status = 415
    code = "unsupported_media_type"


class SignatureMismatchError(ClientError):
    status = 422
    code = "signature_mismatch"


class RequestCancelledError(ClientError):
    """The request was cancelled (client disconnected) before it ran; 499 as nginx logs it."""

    status = 499
    code = "cancelled"


class ServerBusyError(LadleError):
    status = 503
    code = "overloaded"

    def __init__(self, message: str, retry_after: float = 1.0, **details: Any) -> None:
        super().__init__(message, **details)
        self.retry_after = retry_after


class TooManyRequestsError(ServerBusyError):
    """Shed under load (``shed_status = 429``): the client should slow down and retry later."""

    status = 429
    code = "too_many_requests"


class ModelNotReadyError(LadleError):
    status = 503
    code = "model_not_ready"


class DeadlineExceededError(LadleError):
    status = 504
    code = "deadline_exceeded"


class RuntimeFailureError(LadleError):
    status = 500
    code = "runtime_error"


class InstanceFailedError(RuntimeFailureError):
    code = "instance_failed"


def _rebuild(cls: type[LadleError], message: str, state: dict[str, Any]) -> LadleError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error
