"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """Folder of the project's small real datasets (``../shared/data``); skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA} (../shared/data beside the repository)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path, monkeypatch):
    """Each test logs into its own temporary folder, with seed 0 and no progress bar."""
    import scpredict as sp

    monkeypatch.setattr(sp.settings, "log_dir", tmp_path / "logs")
    monkeypatch.setattr(sp.settings, "seed", 0)
    monkeypatch.setattr(sp.settings, "progress_bar", "none")
    yield
