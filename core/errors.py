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
│   ├── SignatureMismatchError  422  tensor names, types or shapes off the signature
│   └── RequestCancelledError   499  the client went away before the request ran
├── ServerBusyError             503  queue full; carries Retry-After
├── ModelNotReadyError          503  loading, draining or failed
├── DeadlineExceededError       504  the request's deadline passed
└── RuntimeFailureError         500  a runtime raised on valid input
    └── InstanceFailedError     500  the instance (or its worker process) died
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
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
    "UnauthorizedError",
]


class LadleError(Exception):
    """Base of every ladle error; ``status`` is the HTTP status it maps to."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    #: Seconds after which a retry may succeed (sent as ``Retry-After``); ``None``: do not say.
    retry_after: float | None = None

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
        """The JSON error body: ``{"error": message, "code": ..., **details}``."""
        body: dict[str, Any] = {"error": self.message, "code": self.code}
        body.update(self.details)
        return body


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
    status = 401
    code = "unauthorized"


class ModelNotFoundError(ClientError):
    status = 404
    code = "model_not_found"


class PayloadTooLargeError(ClientError):
    status = 413
    code = "payload_too_large"


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
