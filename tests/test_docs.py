"""Documentation: the API reference covers every public object; tutorials are listed and their outputs current."""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path

import pytest

import scpredict as sp

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TUTORIALS = ROOT / "tutorials"
NAMESPACES = ["data", "datasets", "metrics", "models", "pl", "pp", "tl"]


def _api_entries(text: str) -> dict[str, set[str]]:
    """Objects listed in autosummary blocks of ``docs/api.md``, as ``{namespace: {name}}``.

    An entry ``pp.check_input`` under ``.. currentmodule:: scpredict`` is ``{"pp": {"check_input"}}``;
    top-level objects (``settings``) go under ``""``.
    """
    entries: dict[str, set[str]] = {}
    current = "scpredict"
    in_autosummary = False
    for line in text.splitlines():
        stripped = line.strip()
        if m := re.match(r"\.\. currentmodule::\s*(\S+)", stripped):
            current = m.group(1)
            continue
        if stripped.startswith(".. autosummary::"):
            in_autosummary = True
            continue
        if in_autosummary:
            if stripped.startswith("```") or (stripped.startswith("..") and not stripped.startswith(".. _")):
                in_autosummary = False
                continue
            if not stripped or stripped.startswith(":"):
                continue
            if not line.startswith((" ", "\t")):
                in_autosummary = False
                continue
            parts = f"{current}.{stripped}".removeprefix("scpredict").lstrip(".").split(".")
            # ``settings`` -> ("", "settings"); ``pp.check_input`` -> ("pp", "check_input"); nested names
            # (``models.BaseModel.train``) count for their top-level object
            ns, name = ("", parts[0]) if len(parts) == 1 else (parts[0], parts[1])
            entries.setdefault(ns, set()).add(name)
    return entries


@pytest.fixture(scope="module")
def api_text() -> str:
    return (DOCS / "api.md").read_text()


@pytest.fixture(scope="module")
def api(api_text) -> dict[str, set[str]]:
    return _api_entries(api_text)


def test_api_parser_reads_autosummary_blocks():
    text = (
        "```{eval-rst}\n.. module:: scpredict.pp\n.. currentmodule:: scpredict\n\n.. autosummary::\n"
        "   :toctree: generated\n\n   pp.check_input\n   pp.split_cells\n```\n\nnot.an_entry\n"
        "```{eval-rst}\n.. currentmodule:: scpredict\n\n.. autosummary::\n   :toctree: generated\n\n   settings\n```\n"
    )
    assert _api_entries(text) == {"pp": {"check_input", "split_cells"}, "": {"settings"}}


@pytest.mark.parametrize("ns", NAMESPACES)
def test_every_public_object_is_in_the_api_reference(ns, api):
    module = importlib.import_module(f"scpredict.{ns}")
    exported = {name for name in module.__all__ if not name.startswith("_")}
    missing = sorted(exported - api.get(ns, set()))
    assert not missing, f"add to docs/api.md under `{ns}`: " + ", ".join(f"{ns}.{m}" for m in missing)


@pytest.mark.parametrize("ns", NAMESPACES)
def test_api_reference_lists_only_existing_objects(ns, api):
    documented = api.get(ns, set())
    if ns == "models":  # the lazy table, so that this test does not import torch
        known = set(sp.models._LAZY)
    else:
        module = importlib.import_module(f"scpredict.{ns}")
        known = {name for name in documented if hasattr(module, name)}
    stale = sorted(documented - known)
    assert not stale, f"docs/api.md lists objects that `scpredict.{ns}` does not have: {stale}"


@pytest.mark.parametrize("ns", NAMESPACES)
def test_each_namespace_has_its_module_block(ns, api_text):
    assert re.search(rf"^\.\. module:: scpredict\.{ns}\s*$", api_text, flags=re.M), (
        f"docs/api.md needs a `.. module:: scpredict.{ns}` block"
    )


def test_top_level_public_objects_documented(api):
    top = {n for n in sp.__all__ if not n.startswith("_") and n not in NAMESPACES}
    assert top <= api.get("", set()), f"document in docs/api.md: {sorted(top - api.get('', set()))}"


def test_models_lazy_table_stays_torch_free():
    # importing scpredict (and reading the lazy table) must not pull torch in; run in a fresh interpreter
    import subprocess

    code = "import sys, scpredict as sp; sp.models.__all__; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ------------------------------------------------------------------------------------------------ pages
def _toctree_entries(md: Path) -> set[str]:
    entries, inside = set(), False
    for line in md.read_text().splitlines():
        s = line.strip()
        if s.startswith("```{toctree}"):
            inside = True
            continue
        if inside and s.startswith("```"):
            inside = False
            continue
        if inside and s and not s.startswith(":"):
            entries.add(s)
    return entries


def test_user_guide_pages_are_in_a_toctree():
    pages = sorted((DOCS / "user_guide").glob("*.md"))
    assert pages, "docs/user_guide/ has no pages"
    listed = _toctree_entries(DOCS / "user_guide" / "index.md")
    orphans = [p.stem for p in pages if p.stem != "index" and p.stem not in listed]
    assert not orphans, f"add to the toctree of docs/user_guide/index.md: {orphans}"
    assert "user_guide/index" in _toctree_entries(DOCS / "index.md")


def _tutorials() -> list[Path]:
    return sorted(TUTORIALS.glob("*.ipynb"))


def test_tutorials_are_listed_in_the_docs():
    listed = _toctree_entries(DOCS / "tutorials.md")
    notebooks = {f"tutorials/{p.stem}" for p in _tutorials()}
    assert notebooks, "no tutorials in tutorials/"
    assert notebooks == listed, f"docs/tutorials.md toctree {sorted(listed)} != notebooks {sorted(notebooks)}"
    assert "tutorials" in _toctree_entries(DOCS / "index.md")


@pytest.mark.parametrize("path", _tutorials(), ids=lambda p: p.stem)
def test_tutorial_outputs_belong_to_its_code(path):
    sys.path.insert(0, str(TUTORIALS))
    try:
        from run import code_sha256  # tutorials/run.py
    finally:
        sys.path.remove(str(TUTORIALS))
    nb = json.loads(path.read_text())
    meta = nb["metadata"].get("scpredict", {})
    assert meta.get("source_sha256") == code_sha256(nb), (
        f"{path.name}: code changed since its outputs were stored; run `python tutorials/run.py {path.stem}`"
    )
    assert meta.get("mode") == "full", f"{path.name}: stored outputs come from a {meta.get('mode')!r} run"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1)), (
        f"{path.name}: cells were not executed once, top to bottom"
    )
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: stored outputs contain an error: {errors[0].get('ename')}"
    images = [o for c in code for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, f"{path.name}: shows no figure"
