"""Sphinx configuration."""

from __future__ import annotations

import sys
from datetime import date
from importlib.metadata import version as _version
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "_ext"))

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

source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
master_doc = "index"
exclude_patterns = ["_build", "dev", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]

intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "anndata": ("https://anndata.readthedocs.io/en/stable/", None),
    "scanpy": ("https://scanpy.readthedocs.io/en/stable/", None),
    "numpy": ("https://numpy.org/doc/stable/", None),
    "pandas": ("https://pandas.pydata.org/docs/", None),
    "torch": ("https://pytorch.org/docs/stable/", None),
    "lightning": ("https://lightning.ai/docs/pytorch/stable/", None),
}
# The build machine has no network: intersphinx inventories cannot be fetched, so references to external
# types are not resolved; we keep nitpicky for our own objects and ignore unresolved external ones.
intersphinx_disabled_reftypes = ["*"]
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(numpy|np|pandas|pd|anndata|AnnData|torch|lightning|scipy|matplotlib|mudata|collections|typing|pathlib|xgboost|sklearn|scvi)\b.*"),
    (r"py:.*", r"(Axes|Figure|DataFrame|ndarray|Tensor|Path|Literal|Sequence|Mapping|Iterable|Any|Callable|MuData|optional|array-like|dtype|Generator|Module|Series|Index|csr_matrix|spmatrix)\b.*"),
    (r"py:.*", r".*\b(int|float|str|bool|dict|list|tuple|None|callable|object)\b.*"),
    (r"py:class", r"scpredict\._.*"),
]

html_theme = "sphinx_book_theme"
html_title = "scpredict"
html_theme_options = {"repository_url": "https://example.invalid/scpredict", "use_repository_button": False}
suppress_warnings = ["mystnb.unknown_mime_type", "myst.header", "intersphinx.external"]
