"""Fixtures shared by every test folder."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example models, the zoo (``modelfleet.runtime.zoo``) and an empty state for
    parameter-free test architectures. torch is imported here, not at the top: the
    operator's and the gateway's tests run without it."""
    import torch
    from safetensors.torch import save_file

    from modelfleet.runtime.examples import write_examples
    from modelfleet.runtime.zoo import write_zoo

    store = tmp_path_factory.mktemp("models")
    write_examples(store)
    write_zoo(store)
    save_file({}, str(store / "empty.safetensors"))
    torch.save({}, store / "empty.pt")
    return store
