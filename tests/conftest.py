"""Fixtures shared by every test folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from modelfleet.runtime.examples import write_examples


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example models plus an empty state for parameter-free test architectures."""
    store = tmp_path_factory.mktemp("models")
    write_examples(store)
    save_file({}, str(store / "empty.safetensors"))
    torch.save({}, store / "empty.pt")
    return store
