"""pytest plugin shipped with ladle (entry point ``pytest11``): fixtures for plugin authors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..plugin_host import PluginHost


@pytest.fixture
def ladle_host() -> Iterator[PluginHost]:
    """A fresh plugin host with every installed plugin discovered."""
    yield PluginHost().discover()
