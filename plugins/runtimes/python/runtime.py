"""The Python runtime: a user's handler class serves the batches.

A handler is any class with a no-argument constructor and ``predict(batch) -> {name: array}``;
it may also define ``load(directory, options)``, ``signature()`` (a ``Signature`` or its dict
form), ``memory_bytes()`` and ``unload()``. It comes from one of two places:

- ``options.handler = "package.module:Class"``: installed code, imported like any library;
- ``handler.py`` in the version directory (class ``Handler``, or ``options.handler_class``):
  code shipped with the model, executed only when the model sets ``trust_code``.

Every other option is handed to the handler's ``load``. A handler raises ``InvalidInputError`` for
inputs it refuses; the core then fails that request alone.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from ladle import Arrays, Batch, ConfigError, Runtime, Signature, process_rss_bytes

from . import HANDLER_FILE

OPTIONS = ("handler", "handler_class")


class Handler(Protocol):
    """What the Python runtime needs from a handler (the other methods are optional)."""

    def predict(self, batch: Batch) -> Mapping[str, Any]: ...


def import_object(target: str) -> Any:
    """``"package.module:Attribute"`` -> the attribute (a ``ConfigError`` names what is missing)."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"handler must be 'module:Class', got {target!r}")
    try:
        value: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import handler module {module_name!r}: {exc}") from None
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise ConfigError(f"module {module_name!r} has no {attribute!r}") from None
    return value


def load_file(path: Path, class_name: str) -> Any:
    """Execute ``path`` as a module of its own and return its ``class_name``."""
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    module_name = f"ladle_handler_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: cannot be loaded as a Python module", file=str(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look their module up here
    try:
        spec.loader.exec_module(module)
    except Exception:
        sys.modules.pop(module_name, None)
        raise
    try:
        return getattr(module, class_name)
    except AttributeError:
        raise ConfigError(
            f"{path} defines no {class_name!r} (set options.handler_class)", file=str(path)
        ) from None


class PythonRuntime(Runtime):
    """Serves a handler class; see the module docstring."""

    name = "python"

    def load(self) -> None:
        options = dict(self.spec.options)
        directory = self.spec.path if self.spec.path.is_dir() else self.spec.path.parent
        target = options.pop("handler", None)
        class_name = str(options.pop("handler_class", "Handler"))
        if target:
            factory = import_object(str(target))
        elif (directory / HANDLER_FILE).is_file():
            path = directory / HANDLER_FILE
            if not self.spec.trust_code:
                raise ConfigError(
                    f"{path}: refusing to execute code from the model directory. If you trust this "
                    f"model's source, set trust_code = true for model {self.spec.model!r} (model.toml "
                    "or ladle.toml); or install the handler as a package and set "
                    "options.handler = 'module:Class'",
                    file=str(path),
                    key="trust_code",
                )
            factory = load_file(path, class_name)
        else:
            raise ConfigError(
                f"{directory}: no handler; set options.handler = 'module:Class' or add {HANDLER_FILE}",
                file=str(directory),
            )
        if not isinstance(factory, type):
            raise ConfigError(
                f"handler {target or class_name!r} is not a class but a {type(factory).__name__}"
            )
        self._rss_before = process_rss_bytes()
        self.handler: Any = factory()
        if not callable(getattr(self.handler, "predict", None)):
            raise ConfigError(f"handler {factory!r} has no predict(batch) method")
        if hasattr(self.handler, "load"):
            self.handler.load(directory, options)

    def signature(self) -> Signature | None:
        configured = super().signature()
        if configured is not None:
            return configured
        declared = getattr(self.handler, "signature", None)
        if declared is None:
            return None
        value = declared() if callable(declared) else declared
        if value is None or isinstance(value, Signature):
            return value
        return Signature.from_dict(value)

    def warmup(self) -> None:
        own = getattr(self.handler, "warmup", None)
        if callable(own):
            own()
        else:
            super().warmup()

    def predict(self, batch: Batch) -> Arrays:
        result = self.handler.predict(batch)
        return result if isinstance(result, dict) else dict(result)

    def memory_bytes(self) -> int | None:
        measured = getattr(self.handler, "memory_bytes", None)
        if callable(measured):
            value = measured()
            if value is not None:
                return int(value)
        # Nothing better: what the process grew by while the handler loaded and warmed up.
        return max(0, process_rss_bytes() - self._rss_before) if self._rss_before else None

    def unload(self) -> None:
        handler = self.__dict__.pop("handler", None)
        if handler is not None and callable(getattr(handler, "unload", None)):
            handler.unload()
