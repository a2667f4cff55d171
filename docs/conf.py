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
]

html_theme = "sphinx_book_theme"
html_title = "scpredict"
html_theme_options = {"use_repository_button": False}
suppress_warnings = ["mystnb.unknown_mime_type", "myst.header", "intersphinx.external"]
