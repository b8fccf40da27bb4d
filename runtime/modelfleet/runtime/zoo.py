"""A model zoo built from code: small stand-ins for the models people serve.

Each factory returns a module shaped like a well-known model (same inputs, same
outputs, same kinds of layers) but small enough to run fast on a 2-CPU CI
machine. Weights are made here with fixed seeds (``write_zoo``), so nothing is
downloaded and every run writes the same bytes. Serve one with
``architecture: modelfleet.runtime.zoo:<factory>`` and the fields of ``ZOO``:

=========  ==========================================  ======================================
factory    inputs                                      outputs
=========  ==========================================  ======================================
bert       ids INT64 [-1, -1], mask INT64 [-1, -1]     pooled FP32 [-1, 64],
                                                       tokens FP32 [-1, -1, 64]
gpt        ids INT64 [-1, -1], mask INT64 [-1, -1]     logits FP32 [-1, 1000] (next token)
resnet     image FP32 [-1, 3, 224, 224]                logits FP32 [-1, 1000]
multi_io   a FP32 [-1, 8], b INT32 [-1, 4],            sum FP32 [-1, 8], count INT64 [-1, 1],
           scale FP64 [-1, 1]                          scaled FP64 [-1, 4]
text_hash  text BYTES [-1, 1]                          embedding FP32 [-1, 4]
=========  ==========================================  ======================================

The sequence models take right-padded batches (``mask`` 0 on padding) and answer
for each row exactly as for that row alone, within float rounding: ``padded``
gives their batching settings with the runtime's bucket padding.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# -- transformer parts -----------------------------------------------------------


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean "may attend" mask as an additive one: 0 where allowed, the most
    negative finite value elsewhere. Finite, so that a query with no key allowed
    (an all-padding row, as warm-up sends) averages over every key instead of
    turning into NaN; a masked key's weight is exp(min - max) = 0 exactly."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    lowest = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, lowest)


class SelfAttention(nn.Module):
    """Multi-head self-attention (one fused q/k/v projection, as in GPT-2 and most
    BERT ports) on ``scaled_dot_product_attention`` with an additive mask."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be a multiple of heads ({heads})")
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``x`` [B, L, H]; ``bias`` additive, broadcastable to [B, heads, L, L]."""
        b, length, hidden = x.shape
        q, k, v = (
            self.qkv(x).view(b, length, 3, self.heads, hidden // self.heads).permute(2, 0, 3, 1, 4)
        )
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.out(y.transpose(1, 2).reshape(b, length, hidden))  # type: ignore[no-any-return]


def _init_embeddings(*embeddings: nn.Embedding) -> None:
    """N(0, 0.02), as BERT and GPT-2 initialize them (torch's default is N(0, 1))."""
    for e in embeddings:
        nn.init.normal_(e.weight, std=0.02)


def _mlp(hidden: int, ffn: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden, ffn), nn.GELU(), nn.Linear(ffn, hidden))


class PostLNLayer(nn.Module):
    """A BERT encoder layer: attention and feed-forward, each followed by
    residual + LayerNorm (post-LN)."""

    def __init__(self, hidden: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.attn = SelfAttention(hidden, heads)
        self.ln1 = nn.LayerNorm(hidden)
        self.mlp = _mlp(hidden, ffn)
        self.ln2 = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self.ln1(x + self.attn(x, bias))
        return self.ln2(x + self.mlp(x))  # type: ignore[no-any-return]


class PreLNLayer(nn.Module):
    """A GPT-2 decoder layer: LayerNorm before attention and feed-forward (pre-LN)."""

    def __init__(self, hidden: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(hidden)
        self.attn = SelfAttention(hidden, heads)
        self.ln2 = nn.LayerNorm(hidden)
        self.mlp = _mlp(hidden, ffn)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), bias)
        return x + self.mlp(self.ln2(x))  # type: ignore[no-any-return]


# -- bert ------------------------------------------------------------------------


class Bert(nn.Module):
    """Imitates BERT-base as a feature extractor (sentence embeddings, e.g. for
    retrieval), at 1/12 of its width and 1/6 of its depth.

    Inputs: ``ids`` INT64 [B, L] token ids below ``vocab``; ``mask`` INT64 [B, L],
    1 for a token, 0 for padding (padding goes on the right, L <= ``max_len``).
    Outputs: ``tokens`` FP32 [B, L, H], the final hidden state of every position;
    ``pooled`` FP32 [B, H], tanh(Linear(mean of the valid tokens' states)) (the
    mean rather than BERT's [CLS] state, as sentence-transformers pool). An
    all-padding row gives tanh(bias), never NaN.

    Layers: token + learned position embeddings, LayerNorm, ``layers`` post-LN
    encoder layers with ``heads``-head bidirectional attention over the valid
    keys, GELU feed-forward of 4H."""

    def __init__(
        self, vocab: int, hidden: int, layers: int, heads: int, max_len: int, ffn: int
    ) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, hidden)
        self.pos = nn.Embedding(max_len, hidden)
        self.ln = nn.LayerNorm(hidden)
        self.layers = nn.ModuleList(PostLNLayer(hidden, heads, ffn) for _ in range(layers))
        self.pool = nn.Linear(hidden, hidden)
        _init_embeddings(self.tok, self.pos)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.ln(self.tok(ids) + self.pos(positions))
        valid = mask != 0  # [B, L]
        bias = _additive(valid[:, None, None, :], x.dtype)  # [B, 1, 1, L]: keys only
        for layer in self.layers:
            x = layer(x, bias)
        weights = valid.to(x.dtype).unsqueeze(-1)  # [B, L, 1]
        mean = (x * weights).sum(1) / weights.sum(1).clamp(min=1)
        return {"pooled": torch.tanh(self.pool(mean)), "tokens": x}


def bert(
    vocab: int = 1000,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    max_len: int = 128,
    ffn: int = 0,
) -> nn.Module:
    """``Bert`` (``ffn`` 0: 4 x hidden)."""
    return Bert(vocab, hidden, layers, heads, max_len, ffn or 4 * hidden)


# -- gpt -------------------------------------------------------------------------


class Gpt(nn.Module):
    """Imitates GPT-2 answering one step of generation: the logits of the token
    that follows the prompt (no KV cache: the whole prompt each call).

    Inputs: ``ids`` INT64 [B, L]; ``mask`` INT64 [B, L], 1 for a token, 0 for
    padding on the right. Output: ``logits`` FP32 [B, vocab] at the last valid
    position (``sum(mask) - 1``, position 0 for an all-padding row).

    Layers: token + learned position embeddings, ``layers`` pre-LN decoder
    layers with causal ``heads``-head attention over the valid keys, a final
    LayerNorm, and the output projection tied to the token embedding (GPT-2's
    weight tying: no separate head in the state dict)."""

    def __init__(
        self, vocab: int, hidden: int, layers: int, heads: int, max_len: int, ffn: int
    ) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, hidden)
        self.pos = nn.Embedding(max_len, hidden)
        self.layers = nn.ModuleList(PreLNLayer(hidden, heads, ffn) for _ in range(layers))
        self.ln = nn.LayerNorm(hidden)
        _init_embeddings(self.tok, self.pos)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length = ids.shape
        positions = torch.arange(length, device=ids.device)
        x = self.tok(ids) + self.pos(positions)
        causal = torch.ones(length, length, dtype=torch.bool, device=ids.device).tril()
        valid = mask != 0
        # Combined as booleans: two additive masks summed would overflow to -inf.
        bias = _additive(causal[None, None] & valid[:, None, None, :], x.dtype)  # [B, 1, L, L]
        for layer in self.layers:
            x = layer(x, bias)
        last = (valid.sum(1) - 1).clamp(min=0)  # [B]
        index = last.view(batch, 1, 1).expand(batch, 1, x.shape[2])
        h = self.ln(x.gather(1, index).squeeze(1))  # [B, H]
        return F.linear(h, self.tok.weight)


def gpt(
    vocab: int = 1000,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    max_len: int = 128,
    ffn: int = 0,
) -> nn.Module:
    """``Gpt`` (``ffn`` 0: 4 x hidden)."""
    return Gpt(vocab, hidden, layers, heads, max_len, ffn or 4 * hidden)


# -- resnet ----------------------------------------------------------------------


class BasicBlock(nn.Module):
    """torchvision's ResNet-18/34 block: two 3x3 conv + BatchNorm, identity (or
    1x1 conv + BatchNorm when the shape changes) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.downsample(x))


class ResNet(nn.Module):
    """Imitates torchvision's ResNet-18 ImageNet classifier, narrower (widths
    16/32/64/128 instead of 64..512) and one block per stage instead of two.

    Input: ``image`` FP32 [B, 3, 224, 224] (normalized RGB). Output: ``logits``
    FP32 [B, classes].

    Layers (torchvision's names): ``conv1`` 7x7 stride 2 + ``bn1`` + ReLU +
    3x3 stride-2 max pool, ``layer1``..``layer4`` of ``BasicBlock`` (strides
    1/2/2/2), global average pool, ``fc``. Every BatchNorm gets a non-trivial
    affine transform and running statistics at construction (from the global
    RNG, so ``write_zoo``'s seed fixes them): in eval mode it is not the
    identity, as in a trained network. Runs channels-last (NHWC) inside; about
    7 ms per image on one CPU thread."""

    def __init__(self, widths: tuple[int, ...], classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, cin = [], widths[0]
        for i, cout in enumerate(widths):
            stages.append(nn.Sequential(BasicBlock(cin, cout, 1 if i == 0 else 2)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(cin, classes)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0.0, 0.1)
                    m.running_mean.normal_(0.0, 0.1)  # type: ignore[union-attr]
                    m.running_var.uniform_(0.5, 1.5)  # type: ignore[union-attr]
        # NHWC: oneDNN's convolutions and pooling ran this net about 30% faster on one
        # CPU thread than NCHW (max pooling alone: 2.2 -> 0.3 ms). Loading a state
        # dict copies into these tensors, so the layout stays.
        self.to(memory_format=torch.channels_last)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.contiguous(memory_format=torch.channels_last)
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean((2, 3)))  # type: ignore[no-any-return]


def resnet(classes: int = 1000, width: int = 16) -> nn.Module:
    """``ResNet`` with stage widths ``width`` x 1/2/4/8."""
    return ResNet(tuple(width * f for f in (1, 2, 4, 8)), classes)


# -- multi_io --------------------------------------------------------------------


class MultiIO(nn.Module):
    """Not a real model: exercises several named inputs and outputs of mixed
    dtypes, as a tabular model or a pre/post-processing graph has them.

    Inputs: ``a`` FP32 [B, 8], ``b`` INT32 [B, 4], ``scale`` FP64 [B, 1].
    Outputs: ``sum`` FP32 [B, 8] = Linear(a) + the row sum of ``b``;
    ``count`` INT64 [B, 1] = how many of ``b`` are positive;
    ``scaled`` FP64 [B, 4] = Linear'(a) x ``scale``, in float64."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 8)
        self.proj = nn.Linear(8, 4)

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return {
            "sum": self.linear(a) + b.to(torch.float32).sum(1, keepdim=True),
            "count": (b > 0).sum(1, keepdim=True).to(torch.int64),
            "scaled": self.proj(a).to(torch.float64) * scale,
        }


def multi_io() -> nn.Module:
    return MultiIO()


# -- text_hash -------------------------------------------------------------------


def _as_bytes(item: object) -> bytes:
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item)
    if isinstance(item, str):
        return item.encode()
    return str(item).encode()  # e.g. the 0 of a zero-filled object array


class TextHash(nn.Module):
    """Imitates a fastText-style text classifier with the hashing trick: the
    tokenizer lives inside the model, so clients send raw strings.

    Input: ``text`` BYTES [B, 1]: a numpy array of dtype ``object`` holding
    ``bytes`` (``str`` is encoded as UTF-8; the strings of a row with more than
    one column are concatenated as words). Each string is split on whitespace and
    each word becomes token ``crc32(word) % vocab``; an empty string has no
    tokens. Output: ``embedding`` FP32 [B, 4] = Linear(mean of the row's token
    embeddings) (``nn.EmbeddingBag``, mode mean; an empty row's mean is 0)."""

    def __init__(self, vocab: int, dim: int, out: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.bag = nn.EmbeddingBag(vocab, dim, mode="mean")
        self.head = nn.Linear(dim, out)

    def tokenize(self, text: Any) -> tuple[list[int], list[int]]:
        """Token ids of every row, concatenated, and each row's offset in them."""
        rows = np.asarray(text, dtype=object)
        rows = rows.reshape(rows.shape[0] if rows.ndim else 1, -1)
        ids: list[int] = []
        offsets: list[int] = []
        for row in rows:
            offsets.append(len(ids))
            for item in row:
                ids.extend(zlib.crc32(word) % self.vocab for word in _as_bytes(item).split())
        return ids, offsets

    def forward(self, text: Any) -> torch.Tensor:
        ids, offsets = self.tokenize(text)
        device = self.bag.weight.device
        bags = self.bag(
            torch.tensor(ids, dtype=torch.int64, device=device),
            torch.tensor(offsets, dtype=torch.int64, device=device),
        )
        return self.head(bags)  # type: ignore[no-any-return]


def text_hash(vocab: int = 4096, dim: int = 32, out: int = 4) -> nn.Module:
    return TextHash(vocab, dim, out)


# -- runtime configuration -------------------------------------------------------


def _specs(*specs: tuple[str, str, list[int]]) -> list[dict[str, Any]]:
    return [{"name": n, "datatype": d, "shape": s} for n, d, s in specs]


_SEQUENCE_INPUTS = _specs(("ids", "INT64", [-1, -1]), ("mask", "INT64", [-1, -1]))

ZOO: dict[str, dict[str, Any]] = {
    "bert": {
        "architecture": "modelfleet.runtime.zoo:bert",
        "inputs": _SEQUENCE_INPUTS,
        "outputs": _specs(("pooled", "FP32", [-1, 64]), ("tokens", "FP32", [-1, -1, 64])),
        "batching": {"max_batch_size": 16, "max_queue_delay_ms": 5},
    },
    "gpt": {
        "architecture": "modelfleet.runtime.zoo:gpt",
        "inputs": _SEQUENCE_INPUTS,
        "outputs": _specs(("logits", "FP32", [-1, 1000])),
        "batching": {"max_batch_size": 16, "max_queue_delay_ms": 5},
    },
    "resnet": {
        "architecture": "modelfleet.runtime.zoo:resnet",
        "inputs": _specs(("image", "FP32", [-1, 3, 224, 224])),
        "outputs": _specs(("logits", "FP32", [-1, 1000])),
        "batching": {"max_batch_size": 8, "max_queue_delay_ms": 5},
    },
    "multi_io": {
        "architecture": "modelfleet.runtime.zoo:multi_io",
        "inputs": _specs(
            ("a", "FP32", [-1, 8]), ("b", "INT32", [-1, 4]), ("scale", "FP64", [-1, 1])
        ),
        "outputs": _specs(
            ("sum", "FP32", [-1, 8]), ("count", "INT64", [-1, 1]), ("scaled", "FP64", [-1, 4])
        ),
        "batching": {"max_batch_size": 32, "max_queue_delay_ms": 2},
    },
    "text_hash": {
        "architecture": "modelfleet.runtime.zoo:text_hash",
        "inputs": _specs(("text", "BYTES", [-1, 1])),
        "outputs": _specs(("embedding", "FP32", [-1, 4])),
        "batching": {"max_batch_size": 32, "max_queue_delay_ms": 2},
    },
}
"""Per model, the runtime config fields but ``name``, ``version`` and ``source``
(``<name>.safetensors`` as ``write_zoo`` writes it). Copy before changing."""

FACTORIES: dict[str, Callable[[], nn.Module]] = {
    "bert": bert,
    "gpt": gpt,
    "resnet": resnet,
    "multi_io": multi_io,
    "text_hash": text_hash,
}

BUCKETS = (16, 32, 64, 128)
"""Sequence lengths ``padded`` pads to (the largest is the models' ``max_len``)."""

_PADDED_OUTPUTS = {"bert": ["tokens"], "gpt": []}


def padded(name: str) -> dict[str, Any]:
    """``ZOO[name]``'s batching with bucket padding of ``ids`` and ``mask`` (0 on
    the right); bert's per-token ``tokens`` are sliced back to each request's length."""
    if name not in _PADDED_OUTPUTS:
        raise ValueError(f"only {', '.join(_PADDED_OUTPUTS)} take padded sequences, not {name!r}")
    batching: dict[str, Any] = copy.deepcopy(ZOO[name]["batching"])
    batching["pad"] = {
        "inputs": {"ids": 0, "mask": 0},
        "axis": 1,
        "buckets": list(BUCKETS),
        "outputs": list(_PADDED_OUTPUTS[name]),
    }
    return batching


SEED = 0


def build(name: str) -> nn.Module:
    """The model ``name`` with ``write_zoo``'s weights (fixed seed), in eval mode."""
    torch.manual_seed(SEED)
    return FACTORIES[name]().eval()


def write_zoo(out: str | Path) -> list[str]:
    """Writes ``<name>.safetensors`` for every model of ``ZOO`` (fixed seed) unless
    an up-to-date copy is there; one line per file, as ``write_examples``."""
    from modelfleet.runtime.examples import write_state

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return [write_state(out / f"{name}.safetensors", build(name).state_dict()) for name in ZOO]
