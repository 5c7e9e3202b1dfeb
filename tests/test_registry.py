"""The explicit registry: every listed family module exists, names resolve, descriptors are sane."""

from __future__ import annotations

import importlib

import pytest

import archs


def test_every_listed_family_module_exists() -> None:
    for name in archs._FAMILY_MODULES:
        importlib.import_module(f"archs.{name}")


@pytest.mark.parametrize("name", archs.names())
def test_descriptor(name: str) -> None:
    spec = archs.spec(name)
    assert spec.id == name and spec.scale >= 1 and spec.context >= 0 and spec.multiple_of >= 1
    assert spec.tasks and all(t in ("deblur", "denoise", "upscale", "restore", "face") for t in spec.tasks)
    assert spec.tiling in ("safe", "tlc", "global", "internal") and spec.code_license
    assert archs.entry(spec.upstream_class).id == name or archs.entry(name).cls.__name__ != spec.upstream_class


def test_unknown_name_and_argument() -> None:
    with pytest.raises(KeyError, match="unknown architecture"):
        archs.entry("no-such-arch")
    with pytest.raises(TypeError, match="unknown argument"):
        archs.build("span", no_such_kwarg=1)
