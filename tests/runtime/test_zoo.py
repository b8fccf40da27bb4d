"""The model zoo: configs validate, weights load strictly, outputs match the
declared tensors, batching and right padding change nothing, files are deterministic."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from modelfleet.runtime.config import ModelConfig
from modelfleet.runtime.loader import load_module
from modelfleet.runtime.protocol import NP_DTYPES
from modelfleet.runtime.zoo import ZOO, padded, write_zoo

ATOL = 1e-5


def config(name: str, **overrides: Any) -> ModelConfig:
    return ModelConfig.model_validate(
        {"name": name, "source": f"{name}.safetensors", **ZOO[name], **overrides}
    )


@pytest.fixture(scope="module")
def models(model_store: Path) -> dict[str, torch.nn.Module]:
    """Every zoo model, loaded by the runtime's loader (strict state dict) on CPU."""
    return {name: load_module(config(name), model_store, torch.device("cpu")) for name in ZOO}


def inputs_for(name: str, batch: int, length: int = 7, seed: int = 0) -> list[Any]:
    """Inputs as the runtime hands them over: tensors, BYTES as object arrays."""
    g = torch.Generator().manual_seed(seed)
    out: list[Any] = []
    for spec in ZOO[name]["inputs"]:
        shape = [batch, *(length if d == -1 else d for d in spec["shape"][1:])]
        kind = spec["datatype"]
        if kind == "BYTES":
            words = ["alpha", "beta", "gamma delta", "", "épsilon  zeta"]
            out.append(np.array([[words[i % len(words)].encode()] for i in range(batch)], object))
        elif spec["name"] == "mask":
            out.append(torch.ones(shape, dtype=torch.int64))
        elif spec["name"] == "ids":
            out.append(torch.randint(1, 1000, shape, generator=g))
        elif kind.startswith("INT"):
            dtype = torch.from_numpy(np.zeros(0, NP_DTYPES[kind])).dtype
            out.append(torch.randint(-5, 5, shape, generator=g).to(dtype))
        else:
            dtype = torch.from_numpy(np.zeros(0, NP_DTYPES[kind])).dtype
            out.append(torch.randn(shape, generator=g).to(dtype))
    return out


def as_list(name: str, result: Any) -> list[torch.Tensor]:
    if isinstance(result, torch.Tensor):
        return [result]
    return [result[spec["name"]] for spec in ZOO[name]["outputs"]]


@pytest.mark.parametrize("name", list(ZOO))
def test_configs_validate(name: str) -> None:
    cfg = config(name)
    assert cfg.architecture == f"modelfleet.runtime.zoo:{name}"
    if name in ("bert", "gpt"):
        pad = config(name, batching=padded(name)).batching.pad
        assert pad is not None and pad.buckets == (16, 32, 64, 128)
        assert pad.outputs == (("tokens",) if name == "bert" else ())
        assert "pad" not in ZOO[name]["batching"]  # padded() copies
    else:
        with pytest.raises(ValueError):
            padded(name)


@pytest.mark.parametrize("name", list(ZOO))
def test_outputs_match_declared_tensors(name: str, models: dict[str, torch.nn.Module]) -> None:
    module = models[name]
    assert not module.training
    batch, length = 3, 7
    with torch.inference_mode():
        produced = as_list(name, module(*inputs_for(name, batch, length)))
    specs = ZOO[name]["outputs"]
    assert len(produced) == len(specs)
    for tensor, spec in zip(produced, specs, strict=True):
        expected = [batch, *(length if d == -1 else d for d in spec["shape"][1:])]
        assert list(tensor.shape) == expected, spec["name"]
        assert tensor.numpy().dtype == NP_DTYPES[spec["datatype"]], spec["name"]
        assert torch.isfinite(tensor.to(torch.float64)).all()


@pytest.mark.parametrize("name", ["resnet", "multi_io", "text_hash"])
def test_batch_equals_singles(name: str, models: dict[str, torch.nn.Module]) -> None:
    module = models[name]
    batch = 3 if name == "resnet" else 5
    args = inputs_for(name, batch)
    with torch.inference_mode():
        together = as_list(name, module(*args))
        for i in range(batch):
            alone = as_list(name, module(*(a[i : i + 1] for a in args)))
            for t, a in zip(together, alone, strict=True):
                torch.testing.assert_close(t[i : i + 1], a, atol=ATOL, rtol=0)


def right_padded(
    ids: list[torch.Tensor], length: int, pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    batch_ids = torch.full((len(ids), length), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(ids), length), dtype=torch.int64)
    for i, row in enumerate(ids):
        batch_ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return batch_ids, mask


def prompts(lengths: list[int]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(1, 1000, (n,), generator=g) for n in lengths]


@pytest.mark.parametrize("bucket", [32, 128])
@pytest.mark.parametrize("pad_id", [0, 7])
def test_bert_right_padding_changes_nothing(
    models: dict[str, torch.nn.Module], bucket: int, pad_id: int
) -> None:
    """Each row of a right-padded batch answers as the row alone at its own length:
    pooled output and the valid tokens' states (the padding's ids do not matter)."""
    bert = models["bert"]
    seqs = prompts([5, 17, 1, 32, 9])
    with torch.inference_mode():
        batch = bert(*right_padded(seqs, bucket, pad_id))
        for i, seq in enumerate(seqs):
            alone = bert(seq[None], torch.ones(1, len(seq), dtype=torch.int64))
            torch.testing.assert_close(batch["pooled"][i], alone["pooled"][0], atol=ATOL, rtol=0)
            torch.testing.assert_close(
                batch["tokens"][i, : len(seq)], alone["tokens"][0], atol=ATOL, rtol=0
            )


@pytest.mark.parametrize("bucket", [32, 128])
@pytest.mark.parametrize("pad_id", [0, 7])
def test_gpt_right_padding_changes_nothing(
    models: dict[str, torch.nn.Module], bucket: int, pad_id: int
) -> None:
    gpt = models["gpt"]
    seqs = prompts([5, 17, 1, 32, 9])
    with torch.inference_mode():
        batch = gpt(*right_padded(seqs, bucket, pad_id))
        for i, seq in enumerate(seqs):
            alone = gpt(seq[None], torch.ones(1, len(seq), dtype=torch.int64))
            torch.testing.assert_close(batch[i], alone[0], atol=ATOL, rtol=0)


def test_gpt_is_causal_and_reads_the_last_valid_token(models: dict[str, torch.nn.Module]) -> None:
    """The logits after a prefix equal those of the prefix alone (later tokens are
    not seen), and differ from the logits after the whole prompt."""
    gpt = models["gpt"]
    (seq,) = prompts([20])
    with torch.inference_mode():
        whole = gpt(seq[None], torch.ones(1, 20, dtype=torch.int64))
        mask = torch.zeros(1, 20, dtype=torch.int64)
        mask[0, :12] = 1
        prefix = gpt(seq[None], mask)
        alone = gpt(seq[None, :12], torch.ones(1, 12, dtype=torch.int64))
    torch.testing.assert_close(prefix, alone, atol=ATOL, rtol=0)
    assert not torch.allclose(prefix, whole, atol=1e-3)


@pytest.mark.parametrize("name", ["bert", "gpt"])
def test_all_padding_rows_are_finite(name: str, models: dict[str, torch.nn.Module]) -> None:
    """Warm-up sends zeros: ids 0 and mask 0 everywhere."""
    zeros = torch.zeros(4, 16, dtype=torch.int64)
    with torch.inference_mode():
        for t in as_list(name, models[name](zeros, zeros)):
            assert torch.isfinite(t).all()


def test_resnet_batchnorm_is_not_the_identity(models: dict[str, torch.nn.Module]) -> None:
    norms = [m for m in models["resnet"].modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms
    for m in norms:
        assert m.running_mean is not None and m.running_var is not None
        assert m.running_mean.abs().min() > 0
        assert not torch.allclose(m.running_var, torch.ones_like(m.running_var))


def test_multi_io_values(models: dict[str, torch.nn.Module]) -> None:
    module: Any = models["multi_io"]
    a = torch.zeros(2, 8)
    b = torch.tensor([[1, 2, 0, -1], [0, 0, 0, 0]], dtype=torch.int32)
    scale = torch.tensor([[2.0], [0.0]], dtype=torch.float64)
    with torch.inference_mode():
        out = module(a, b, scale)
    bias = module.linear.bias.detach()
    torch.testing.assert_close(out["sum"], torch.stack([bias + 2, bias]))
    assert out["count"].tolist() == [[2], [0]]
    torch.testing.assert_close(
        out["scaled"][0], module.proj.bias.detach().double() * 2, atol=1e-6, rtol=0
    )
    assert out["scaled"][1].abs().max() == 0


def test_text_hash_tokenizes_inside_the_model(models: dict[str, torch.nn.Module]) -> None:
    module: Any = models["text_hash"]
    ids, offsets = module.tokenize(np.array([[b"hello  world"], [b""], ["world"]], object))
    hello, world = zlib.crc32(b"hello") % 4096, zlib.crc32(b"world") % 4096
    assert ids == [hello, world, world]
    assert offsets == [0, 2, 2]
    with torch.inference_mode():
        as_str = module(np.array([["héllo wörld"]], object))
        as_bytes = module(np.array([["héllo wörld".encode()]], object))
        spaced = module(np.array([[b"  h\xc3\xa9llo\tw\xc3\xb6rld \n"]], object))
        empty = module(np.array([[b""]], object))
        warmup = module(np.zeros((2, 1), object))  # a zero-filled object array holds int 0
    torch.testing.assert_close(as_bytes, as_str, atol=0, rtol=0)
    torch.testing.assert_close(as_bytes, spaced, atol=0, rtol=0)
    # An empty string has no tokens: the bag's mean is 0, the output the head's bias.
    torch.testing.assert_close(empty[0], module.head.bias.detach(), atol=0, rtol=0)
    assert warmup.shape == (2, 4) and torch.isfinite(warmup).all()


def test_write_zoo_is_deterministic(tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    lines = write_zoo(first)
    assert lines == [f"{first / name}.safetensors (written)" for name in ZOO]
    write_zoo(second)
    for name in ZOO:
        a = (first / f"{name}.safetensors").read_bytes()
        assert a == (second / f"{name}.safetensors").read_bytes(), name
    assert write_zoo(first) == [f"{first / name}.safetensors (kept)" for name in ZOO]


@pytest.mark.parametrize("name", ["bert", "gpt"])
def test_a_traced_sequence_model_answers_like_the_eager_one_at_every_length(
    name: str, models: dict[str, torch.nn.Module], model_store: Path
) -> None:
    traced = load_module(config(name, optimize="trace"), model_store, torch.device("cpu"))
    assert isinstance(traced, torch.jit.ScriptModule)
    with torch.inference_mode():
        for batch, length in [(1, 3), (4, 16), (2, 77)]:
            x = inputs_for(name, batch, length, seed=length)
            eager, fast = models[name](*x), traced(*x)
            pairs = (
                [(eager[k], fast[k]) for k in eager] if isinstance(eager, dict) else [(eager, fast)]
            )
            for want, got in pairs:
                assert got.shape == want.shape
                torch.testing.assert_close(got, want, rtol=1e-4, atol=ATOL)


def test_a_trace_that_bakes_a_length_in_is_refused_at_load(model_store: Path) -> None:
    from modelfleet.runtime.loader import ModelLoadError

    baked = ModelConfig.model_validate({
        "name": "baked", "source": "empty.safetensors", "optimize": "trace",
        "architecture": "tests.runtime.models:length_baked",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, -1]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, -1]}],
    })  # fmt: skip
    with pytest.raises(ModelLoadError, match=r"answers differently .*size 5 along the variable"):
        load_module(baked, model_store, torch.device("cpu"))
