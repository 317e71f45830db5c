"""The plugin host (ladle.plugin_host): discovery, clashes, failures, missing dependencies, replacement."""

from __future__ import annotations

import importlib.metadata as metadata
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pluggy
import pytest

import ladle
from ladle import API_VERSION, PluginHost, Runtime, hookimpl
from ladle.errors import (
    ConfigError,
    DuplicatePluginError,
    MissingDependencyError,
    PluginError,
    PluginNotFoundError,
)
from ladle.plugin_host import DISTRIBUTIONS_VARIABLE

MakeDist = Callable[..., str]


@pytest.fixture
def make_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MakeDist:
    """Install a fake distribution on ``sys.path``: a ``.dist-info`` with ``ladle`` entry points plus modules.

    Returns a suffix that makes module names unique to the test, so ``sys.modules`` never leaks between tests.
    """
    site = tmp_path / "site"
    site.mkdir()
    suffix = uuid.uuid4().hex[:8]

    def make(name: str, version: str, entry_points: dict[str, str], modules: dict[str, str]) -> str:
        info = site / f"{name}-{version}.dist-info"
        info.mkdir()
        info.joinpath("METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        lines = [f"{key} = {value.format(s=suffix)}" for key, value in entry_points.items()]
        info.joinpath("entry_points.txt").write_text("[ladle]\n" + "\n".join(lines) + "\n")
        for module, source in modules.items():
            site.joinpath(f"{module.format(s=suffix)}.py").write_text(textwrap.dedent(source))
        return suffix

    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv(DISTRIBUTIONS_VARIABLE)  # these tests install third-party plugins on purpose
    return make


GOOD_PLUGIN = """
    from ladle import hookimpl

    @hookimpl
    def register_runtimes(register):
        register("doubler", "ladle.runtime:Runtime", description="doubles")

    @hookimpl
    def register_routers(register):
        register("coin", object)
"""


# Discovery -------------------------------------------------------------------------------------


def test_builtin_plugins_are_found_through_entry_points() -> None:
    host = PluginHost().discover()
    record = host.records["runtime-xgboost"]
    assert record.status == "loaded", record.error
    assert record.source == "ladle.plugins.runtimes.xgboost"
    assert record.version == metadata.version("ladle")
    assert record.hooks == ["register_runtimes"]
    registration = host.get("runtime", "xgboost")
    assert registration.plugin == "runtime-xgboost"
    assert registration.requires == ("xgboost",)
    assert registration.extra == "xgboost"
    assert registration.detect is not None


@pytest.mark.parametrize("module_first", [True, False])
def test_a_builtin_also_added_by_module_name_is_one_plugin(module_first: bool) -> None:
    """A worker process adds its plugins by module name and discovers entry points, in either order."""
    host = PluginHost()
    if module_first:
        host.add_module("ladle.plugins.scalers.mps")
    host.discover()
    if not module_first:
        host.add_module("ladle.plugins.scalers.mps")
    host.collect()
    loaded = [r for r in host.records.values() if r.source == "ladle.plugins.scalers.mps"]
    assert [r.status for r in loaded] == ["loaded"]
    assert host.get("placement", "mps").plugin == loaded[0].name


def test_every_builtin_plugin_loads() -> None:
    """Registration modules import no framework, so a built-in that fails to load is a bug."""
    builtin = {
        ep.name for ep in metadata.entry_points(group="ladle") if ep.value.startswith("ladle.plugins.")
    }
    host = PluginHost().discover()
    failed = {name: host.records[name].error for name in builtin if host.records[name].status != "loaded"}
    assert not failed


def test_third_party_entry_point_is_found_with_its_version(make_dist: MakeDist) -> None:
    s = make_dist("acme-ladle", "2.3.1", {"acme": "acme_{s}"}, {"acme_{s}": GOOD_PLUGIN})
    host = PluginHost().discover()
    record = host.records["acme"]
    assert (record.status, record.version, record.source) == ("loaded", "2.3.1", f"acme_{s}")
    assert record.hooks == ["register_routers", "register_runtimes"]
    assert host.get("runtime", "doubler").plugin == "acme"
    assert host.load("runtime", "doubler") is Runtime  # lazy "module:attribute" factories resolve
    assert host.get("router", "coin").factory is object


def test_duplicate_entry_point_names_are_an_error_naming_both(make_dist: MakeDist) -> None:
    s = make_dist("one-ladle", "1.0", {"same": "first_{s}"}, {"first_{s}": GOOD_PLUGIN})
    make_dist("two-ladle", "1.0", {"same": "second_{s}"}, {"second_{s}": GOOD_PLUGIN})
    with pytest.raises(DuplicatePluginError) as info:
        PluginHost().discover()
    assert f"first_{s}" in info.value.message
    assert f"second_{s}" in info.value.message
    assert info.value.details["plugin"] == "same"


def test_duplicate_registered_names_are_an_error_naming_both_plugins() -> None:
    class One:
        @hookimpl
        def register_runtimes(self, register: Any) -> None:
            register("same", Runtime)

    host = PluginHost()
    host.add_plugin(One(), "alpha")
    host.add_plugin(One(), "beta")
    with pytest.raises(DuplicatePluginError) as info:
        host.collect()
    assert "'alpha'" in info.value.message and "'beta'" in info.value.message
    assert sorted(info.value.details["plugins"]) == ["alpha", "beta"]
    assert info.value.details["name"] == "same"


def test_same_plugin_name_twice_is_refused() -> None:
    host = PluginHost()
    host.add_plugin(object(), "twin", source="first")
    with pytest.raises(DuplicatePluginError, match="first and second"):
        host.add_plugin(object(), "twin", source="second")


def test_a_plugin_that_fails_to_import_is_reported_and_the_rest_load(make_dist: MakeDist) -> None:
    s = make_dist(
        "mixed-ladle",
        "0.1",
        {"broken": "broken_{s}", "crashing": "crashing_{s}", "fine": "fine_{s}"},
        {
            "broken_{s}": "import ladletest_framework_that_is_not_installed\n",
            "crashing_{s}": "raise RuntimeError('bad configuration at import')\n",
            "fine_{s}": GOOD_PLUGIN,
        },
    )
    host = PluginHost().discover()
    broken = host.records["broken"]
    assert broken.status == "failed"
    assert "ModuleNotFoundError" in broken.error
    assert "ladletest_framework_that_is_not_installed" in broken.error
    assert host.records["crashing"].status == "failed"
    assert host.records["crashing"].error == "RuntimeError: bad configuration at import"
    assert host.records["fine"].status == "loaded"
    assert host.records["runtime-xgboost"].status == "loaded"
    assert host.get("runtime", "doubler").plugin == "fine"
    described = {p["name"]: p for p in host.describe()}
    assert described["broken"]["status"] == "failed"
    assert f"broken_{s}" == described["broken"]["source"]


def test_config_module_that_fails_to_import_is_reported() -> None:
    host = PluginHost()
    host.add_module("ladletest_no_such_module")
    record = host.records["ladletest_no_such_module"]
    assert record.status == "failed"
    assert "No module named 'ladletest_no_such_module'" in record.error


# Missing dependencies -----------------------------------------------------------------------


class NeedsMissing:
    @hookimpl
    def register_runtimes(self, register: Any) -> None:
        register(
            "fancy", "ladletest_fancy_lib.runtime:Fancy", requires=["ladletest_fancy_lib"], extra="fancy"
        )
        register("plain", "ladletest_plain_lib:Plain", requires=["ladletest_plain_lib"])
        register("lazy", "ladletest_lazy_lib:Lazy", extra="lazy")


def test_plugin_with_missing_dependency_registers_and_fails_on_use() -> None:
    host = PluginHost()
    host.add_plugin(NeedsMissing(), "needs", distribution="acme-ladle")
    registration = host.get("runtime", "fancy")  # listed even though it cannot run here
    assert registration.missing() == ["ladletest_fancy_lib"]
    with pytest.raises(MissingDependencyError) as info:
        host.load("runtime", "fancy")
    error = info.value
    assert "pip install 'acme-ladle[fancy]'" in error.message  # the plugin's own distribution and extra
    assert "ladletest_fancy_lib" in error.message
    assert error.details == {"plugin": "needs", "missing": ["ladletest_fancy_lib"], "extra": "fancy"}
    # without an extra the hint names the module to install
    with pytest.raises(MissingDependencyError, match="pip install ladletest_plain_lib"):
        host.load("runtime", "plain")


def test_factory_that_fails_to_import_is_a_missing_dependency() -> None:
    host = PluginHost()
    host.add_plugin(NeedsMissing(), "needs")
    with pytest.raises(MissingDependencyError, match="failed to import") as info:
        host.load("runtime", "lazy")
    assert info.value.details["extra"] == "lazy"


def test_describe_reports_dependency_status() -> None:
    host = PluginHost()
    host.add_plugin(NeedsMissing(), "needs", version="9.9", distribution="acme-ladle")
    (plugin,) = host.describe()
    assert plugin["name"] == "needs"
    assert plugin["version"] == "9.9"
    assert plugin["status"] == "loaded"
    assert plugin["hooks"] == ["register_runtimes"]
    fancy = next(r for r in plugin["registers"] if r["name"] == "fancy")
    assert fancy == {
        "family": "runtime",
        "name": "fancy",
        "requires": ["ladletest_fancy_lib"],
        "missing": ["ladletest_fancy_lib"],
        "extra": "fancy",
        "install": "pip install 'acme-ladle[fancy]'",
        "description": "",
    }


# Enabling, disabling, replacing -------------------------------------------------------------


class AcmeXGBoost:
    @hookimpl
    def register_runtimes(self, register: Any) -> None:
        register("xgboost", Runtime, description="acme's faster xgboost")


def test_disabled_builtin_is_listed_but_registers_nothing() -> None:
    host = PluginHost(disabled=["runtime-xgboost"]).discover()
    assert host.records["runtime-xgboost"].status == "disabled"
    with pytest.raises(PluginNotFoundError, match="no runtime named 'xgboost'"):
        host.get("runtime", "xgboost")


def test_third_party_replaces_a_builtin_by_disabling_it() -> None:
    clash = PluginHost().discover()
    clash.add_plugin(AcmeXGBoost(), "acme")
    with pytest.raises(DuplicatePluginError) as info:
        clash.get("runtime", "xgboost")
    assert sorted(info.value.details["plugins"]) == ["acme", "runtime-xgboost"]
    assert "disable one" in info.value.message

    host = PluginHost(disabled=["runtime-xgboost"]).discover()
    host.add_plugin(AcmeXGBoost(), "acme")
    registration = host.get("runtime", "xgboost")
    assert registration.plugin == "acme"
    assert registration.description == "acme's faster xgboost"


def test_disabled_entry_point_is_not_even_imported(make_dist: MakeDist) -> None:
    make_dist(
        "off-ladle", "1.0", {"off": "off_{s}"}, {"off_{s}": "raise SystemExit('must not be imported')\n"}
    )
    host = PluginHost(disabled=["off"]).discover()
    assert host.records["off"].status == "disabled"
    assert host.records["off"].error == ""


def test_disabled_plugin_object_is_not_registered() -> None:
    host = PluginHost(disabled=["acme"])
    host.add_plugin(AcmeXGBoost(), "acme")
    assert host.records["acme"].status == "disabled"
    assert host.registrations() == []


# Validation ---------------------------------------------------------------------------------


def test_misspelled_hook_fails_loudly() -> None:
    class Typo:
        @hookimpl
        def register_runtime(self, register: Any) -> None:  # missing "s"
            register("never", Runtime)

    host = PluginHost()
    host.add_plugin(Typo(), "typo")
    with pytest.raises(pluggy.PluginValidationError, match="unknown hook 'register_runtime'"):
        host.collect()


def test_misspelled_hook_in_an_installed_plugin_fails_discovery(make_dist: MakeDist) -> None:
    source = "from ladle import hookimpl\n\n@hookimpl\ndef ladle_start_up(server):\n    pass\n"
    s = make_dist("typo-ladle", "1.0", {"typo": "typo_{s}"}, {"typo_{s}": source})
    with pytest.raises(
        pluggy.PluginValidationError, match=f"unknown hook 'ladle_start_up' in plugin .*typo_{s}"
    ):
        PluginHost().discover()


def test_hook_argument_names_are_checked_at_registration() -> None:
    class WrongArgument:
        @hookimpl
        def register_runtimes(self, callback: Any) -> None: ...

    with pytest.raises(pluggy.PluginValidationError, match="callback"):
        PluginHost().add_plugin(WrongArgument(), "wrong")


@pytest.mark.parametrize("offset", [0, 1])
def test_registration_api_version(offset: int) -> None:
    class Versioned:
        @hookimpl
        def register_batchers(self, register: Any) -> None:
            register("future", object, api_version=API_VERSION + offset)

    host = PluginHost()
    host.add_plugin(Versioned(), "versioned")
    if offset == 0:
        assert host.get("batcher", "future").api_version == API_VERSION
        return
    with pytest.raises(PluginError) as info:
        host.collect()
    assert f"API {API_VERSION + 1}" in info.value.message
    assert f"speaks {API_VERSION}" in info.value.message
    assert info.value.details["plugin"] == "versioned"


@pytest.mark.parametrize("name", ["", "has space", "a/b", "semi;colon", 7])
def test_invalid_registered_names_are_refused(name: object) -> None:
    class Bad:
        @hookimpl
        def register_routers(self, register: Any) -> None:
            register(name, object)

    host = PluginHost()
    host.add_plugin(Bad(), "bad")
    with pytest.raises(PluginError, match="'bad' registered an invalid router name"):
        host.collect()


def test_each_host_is_independent() -> None:
    first = PluginHost()
    first.add_plugin(AcmeXGBoost(), "acme")
    second = PluginHost()
    assert [r.name for r in first.registrations("runtime")] == ["xgboost"]
    assert second.registrations() == []
    assert first.pm is not second.pm


def test_public_api_exports_the_host() -> None:
    assert ladle.PluginHost is PluginHost
    assert {"PluginHost", "Register", "Registration", "API_VERSION", "hookimpl"} <= set(ladle.__all__)


# Install hints always name the extra --------------------------------------------------------


class LadleShipped:
    """Registrations whose factories live in the ``ladle`` distribution, added without naming it
    (as ``[plugins] modules`` and ``add_plugin`` do)."""

    @hookimpl
    def register_runtimes(self, register: Any) -> None:
        register("absent-dep", "ladle.runtime:Runtime", requires=["ladletest_not_installed"], extra="jax")
        register("broken-import", "ladle.plugins.ladletest_no_such_module:Runtime", extra="sklearn")


def test_hint_names_the_extra_when_the_plugin_was_added_without_its_distribution() -> None:
    host = PluginHost()
    host.add_plugin(LadleShipped(), "shipped")
    with pytest.raises(MissingDependencyError) as info:
        host.load("runtime", "absent-dep")
    assert info.value.message.endswith("needs ladletest_not_installed: pip install 'ladle[jax]'")
    listed = next(r for r in host.describe()[0]["registers"] if r["name"] == "absent-dep")
    assert listed["install"] == "pip install 'ladle[jax]'"  # `ladle plugins` says the same


def test_a_failed_import_names_the_extra_too(make_dist: MakeDist) -> None:
    host = PluginHost()
    host.add_plugin(LadleShipped(), "shipped")
    with pytest.raises(MissingDependencyError) as info:
        host.load("runtime", "broken-import")
    assert "failed to import: No module named 'ladle.plugins.ladletest_no_such_module'" in info.value.message
    assert info.value.message.endswith(": pip install 'ladle[sklearn]'")
    # a third party's plugin names its own distribution
    make_dist(
        "acme-lazy",
        "1.0",
        {"acme-lazy": "acme_lazy_{s}"},
        {
            "acme_lazy_{s}": """
                from ladle import hookimpl

                @hookimpl
                def register_runtimes(register):
                    register("lazy", "ladletest_acme_lazy_runtime:Lazy", extra="gpu")
            """,
            # never cached in sys.modules: importing it fails
            "ladletest_acme_lazy_runtime": "import ladletest_absent_framework\n",
        },
    )
    installed = PluginHost().discover()
    with pytest.raises(MissingDependencyError) as third:
        installed.load("runtime", "lazy")
    assert "No module named 'ladletest_absent_framework'" in third.value.message
    assert third.value.message.endswith(": pip install 'acme-lazy[gpu]'")


def test_without_a_known_distribution_the_hint_still_names_the_extra() -> None:
    class Unpackaged:
        @hookimpl
        def register_runtimes(self, register: Any) -> None:
            register(
                "odd", "ladletest_unpackaged_lib:Odd", requires=["ladletest_unpackaged_lib"], extra="odd"
            )

    host = PluginHost()
    host.add_plugin(Unpackaged(), "unpackaged")
    with pytest.raises(MissingDependencyError) as info:
        host.load("runtime", "odd")
    assert info.value.message.endswith(
        "needs ladletest_unpackaged_lib: pip install ladletest_unpackaged_lib "
        "(the 'odd' extra of the package that provides plugin 'unpackaged')"
    )


def test_builtin_runtimes_name_their_extra_whatever_is_missing() -> None:
    """A framework hidden, or only a library it imports (jaxlib under jax, scipy under scikit-learn):
    the error names the runtime's extra, also for a built-in added through ``[plugins] modules``."""
    code = """
        import importlib.abc, sys
        HIDDEN = set(sys.argv[1].split(","))

        class Hide(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.partition(".")[0] in HIDDEN:
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, Hide())
        from ladle import MissingDependencyError, PluginHost

        host = PluginHost(disabled=["runtime-onnx"])
        host.add_module("ladle.plugins.runtimes.onnx")  # as [plugins] modules does: no distribution
        host.discover()
        for name, extra in [("jax", "jax"), ("sklearn", "sklearn"), ("onnx", "onnx")]:
            try:
                host.load("runtime", name)
            except MissingDependencyError as exc:
                assert f"pip install 'ladle[{extra}]'" in exc.message, exc.message
            else:
                raise AssertionError(f"{name} loaded with {sorted(HIDDEN)} hidden")
        hints = {r["name"]: r["install"] for p in host.describe() for r in p["registers"]}
        assert hints["onnx"] == "pip install 'ladle[onnx]'", hints
    """
    import subprocess
    import sys

    hidden = "jaxlib,scipy,onnxruntime"
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), hidden], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]


class _ClaimsOnnx:
    """A third party whose runtime also claims ``model.onnx``."""

    @hookimpl
    def register_runtimes(self, register: Any) -> None:
        register("other-onnx", "math:sqrt", detect=lambda d: (d / "model.onnx").is_file())


def test_two_runtimes_claiming_one_artifact_are_refused_naming_both(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"")
    host = PluginHost()
    host.add_plugin(_ClaimsOnnx(), "third-party")
    host.discover()
    with pytest.raises(ConfigError, match="several runtimes") as caught:
        host.detect_runtime(tmp_path)
    assert caught.value.details["runtimes"] == ["onnx", "other-onnx"]
    assert "runtime-onnx" in caught.value.message and "third-party" in caught.value.message
    lone = PluginHost(disabled=["runtime-onnx"])
    lone.add_plugin(_ClaimsOnnx(), "third-party")
    assert lone.discover().detect_runtime(tmp_path) == "other-onnx"  # disabling one settles it


def test_only_the_named_distributions_load_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DISTRIBUTIONS_VARIABLE, "no-such-distribution")
    assert PluginHost().discover().records == {}
    monkeypatch.setenv(DISTRIBUTIONS_VARIABLE, "ladle")
    assert "runtime-onnx" in PluginHost().discover().records
