"""Sphinx configuration."""

from __future__ import annotations

import os
import shutil
import sys
from datetime import date
from importlib.metadata import version as _version
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "_ext"))

# The tutorials live in ../tutorials (executed by `make tutorials` / tutorials/run.py, outputs stored in the
# notebooks); Sphinx renders copies of them from docs/tutorials/ (generated, git-ignored) without executing.
_TUTORIALS_SRC = HERE.parent / "tutorials"
_TUTORIALS_DST = HERE / "tutorials"
_TUTORIALS_DST.mkdir(exist_ok=True)
for _stale in _TUTORIALS_DST.glob("*.ipynb"):
    if not (_TUTORIALS_SRC / _stale.name).exists():
        _stale.unlink()
for _nb in sorted(_TUTORIALS_SRC.glob("*.ipynb")):
    _dst = _TUTORIALS_DST / _nb.name
    if not _dst.exists() or _dst.read_bytes() != _nb.read_bytes():
        shutil.copyfile(_nb, _dst)

project = "scpredict"
author = "scpredict developers"
copyright = f"{date.today().year}, {author}"  # noqa: A001
release = _version("scpredict")

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx_autodoc_typehints",
]

autosummary_generate = True
templates_path = ["_templates"]
autodoc_member_order = "groupwise"
autodoc_default_options = {"members": True, "inherited-members": False, "show-inheritance": False}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
napoleon_use_param = True
typehints_defaults = "braces"
always_document_param_types = False

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
nb_execution_mode = "off"  # tutorials are executed by `make tutorials` / CI and stored with their outputs
nb_execution_timeout = 900

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
master_doc = "index"
exclude_patterns = ["_build", "dev", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]

_INTERSPHINX = {
    "python": ("https://docs.python.org/3", None),
    "anndata": ("https://anndata.readthedocs.io/en/stable/", None),
    "scanpy": ("https://scanpy.readthedocs.io/en/stable/", None),
    "numpy": ("https://numpy.org/doc/stable/", None),
    "pandas": ("https://pandas.pydata.org/docs/", None),
    "torch": ("https://docs.pytorch.org/docs/stable/", None),
    "lightning": ("https://lightning.ai/docs/pytorch/stable/", None),
}


def _online(host: str = "docs.python.org", timeout: float = 2.0) -> bool:
    """Whether the inventories can be fetched (the build machines here have no network)."""
    import socket

    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


# Intersphinx is used only when the inventories are reachable (or forced with SCPREDICT_DOCS_INTERSPHINX=1), so
# an offline `make docs` with -W does not fail on unreachable inventories. SCPREDICT_DOCS_INTERSPHINX=0 turns it
# off. References to external types are ignored by nitpick either way (see nitpick_ignore_regex).
_intersphinx_env = os.environ.get("SCPREDICT_DOCS_INTERSPHINX")
intersphinx_mapping = (
    _INTERSPHINX if (_intersphinx_env == "1" or (_intersphinx_env is None and _online())) else {}
)
nitpicky = True
nitpick_ignore_regex = [
    (
        r"py:.*",
        r"(numpy|np|pandas|pd|anndata|AnnData|torch|lightning|scipy|matplotlib|mudata|collections|typing|pathlib|xgboost|sklearn|scvi)\b.*",
    ),
    (
        r"py:.*",
        r"(Axes|Figure|DataFrame|ndarray|Tensor|Path|Literal|Sequence|Mapping|Iterable|Any|Callable|MuData|optional|array-like|dtype|Generator|Module|Series|Index|csr_matrix|spmatrix)\b.*",
    ),
    (r"py:.*", r".*\b(int|float|str|bool|dict|list|tuple|None|callable|object)\b.*"),
    (r"py:class", r"scpredict\._.*"),
    # private helpers referenced from docstrings (``:meth:`_setup```) are not part of the documented API
    (r"py:.*", r"_\w+"),
    # napoleon reads "Something: description" on a property's first line as a type; prose is never a class name
    (r"py:class", r".*\s.*"),
    # ... and splits prose in a Returns type ("ndarray (n, m) in [0, 1].") into tokens: numbers, punctuation,
    # one- or two-letter shape symbols are never classes
    (r"py:.*", r"[^A-Za-z_].*"),
    (r"py:class", r"[A-Za-z]{1,2}"),
    # other packages (no intersphinx offline) and the standard library
    (r"py:.*", r"(scanpy|sc|rdkit|pyarrow|h5py|tqdm|os|io|re|datetime|functools|numbers|types|abc|enum)\b.*"),
    # private modules and the torch-level namespaces (module/nn/train) are not part of the documented API
    (r"py:.*", r"scpredict\.(.*\.)?_\w+.*"),
    (r"py:.*", r"scpredict\.(module|nn|train)\b.*"),
    # prose in Returns types: shape symbols (n_obs), lowercase words, non-ASCII symbols (MMD²), "Array"
    (r"py:class", r"[a-z_][a-z0-9_]*"),
    (r"py:class", r"[^.]*[^\x00-\x7f][^.]*"),
    (r"py:class", r"Array(Like)?"),
    (r"py:class", r"SimpleNamespace|ParquetSource"),  # stdlib / a private loader class named in docstrings
    (r"py:data", r"PERTURBATION_METRICS"),  # module constant listed in the docstring's own text
    (r"py:exc", r"UnknownPerturbationError"),  # raised by perturbation models, not exported
]
napoleon_use_ivar = True  # "Attributes" sections as fields: no duplicate entries beside autodoc's members
# "more than one target found" for short names such as n_vars; docutils markup slips in docstrings (a
# multi-line ``literal`` in a Returns type) render as plain text instead of failing the build
suppress_warnings_extra = ["ref.python", "docutils"]


def _resolve_short_names(app, env, node, contnode):  # noqa: PLR0917 - Sphinx event signature
    """Resolve unqualified Python references (``:class:`BiMambaPredictor```) written in private modules.

    Docstrings live in private modules (``scpredict.models._bimamba``), so a short name does not resolve by
    Sphinx's rules; look it up among the documented objects: first as a member of the current class, then as
    a unique object whose full name ends with it.
    """
    from sphinx.util.nodes import make_refnode

    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "").lstrip("~.")
    if not target or target.startswith("_"):
        return None
    objects = env.get_domain("py").objects
    candidates = [name for name in objects if name == target or name.endswith("." + target)]
    cls = node.get("py:class")
    if cls and len(candidates) > 1:
        scoped = [name for name in candidates if name.endswith(f".{cls.split('.')[-1]}.{target}")]
        candidates = scoped or candidates
    if len(candidates) > 1:
        public = [name for name in candidates if name.count(".") <= target.count(".") + 2]
        candidates = public if len(public) == 1 else candidates
    if len(candidates) > 1:  # an inherited member: the first class of the documented object's MRO that has it
        mro_names = []
        owner = node["refdoc"].rsplit("/", 1)[-1]
        try:
            import importlib

            mod, _, attr = owner.rpartition(".")
            mro_names = [
                f"scpredict.{c.__module__.split('.')[1]}.{c.__name__}"
                for c in getattr(importlib.import_module(mod), attr).__mro__
                if c.__module__.startswith("scpredict.")
            ]
        except Exception:  # noqa: BLE001 - not a class page: leave the reference unresolved
            mro_names = []
        for base in mro_names:
            if f"{base}.{target}" in candidates:
                candidates = [f"{base}.{target}"]
                break
    if len(candidates) != 1:
        return None
    entry = objects[candidates[0]]
    return make_refnode(app.builder, node["refdoc"], entry.docname, entry.node_id, contnode, candidates[0])


_ABS_BARS = __import__("re").compile(r"(?<![\\`|])\|(?=[^\s|`])([^|\n`]*?[^\s|`\\])\|(?![|_`])")


def _escape_abs_bars(app, what, name, obj, options, lines):  # noqa: PLR0917 - Sphinx event signature
    """``|x|`` in a docstring is an absolute value, not an RST substitution: escape the bars."""
    for i, line in enumerate(lines):
        if "|" in line and "``" not in line:
            lines[i] = _ABS_BARS.sub(r"\\|\1\\|", line)


def setup(app):
    app.connect("missing-reference", _resolve_short_names)
    app.connect("autodoc-process-docstring", _escape_abs_bars, priority=100)


html_theme = "sphinx_book_theme"
html_title = "scpredict"
html_theme_options = {"use_repository_button": False}
suppress_warnings = [
    "mystnb.unknown_mime_type",
    "myst.header",
    "intersphinx.external",
    *suppress_warnings_extra,
]
