"""On-device export of a trained EODRec student: codes + codebooks + backbone only, and a TorchScript loader.

    python -m recbole_compress.export.eodrec --checkpoint saved/EODRec-....pth --output_dir eodrec_device

writes into the output folder

- ``eodrec_on_device.pt``: the artifact, loadable with ``torch.load(weights_only=True)``: ``codes``
  (``|V|+1 x M``, uint8 when ``K <= 256``), ``codebooks`` (``M x K x N`` float32; with ``code_composition:
  pair_product`` also ``pair_factors``, ``M//2 x 2 x K x N``), the backbone's tensors (position
  table, LayerNorm, transformer, soft-attention readout) and ``meta`` (sizes). No teacher, no code encoder, no
  distillation heads: those only serve training.
- ``eodrec_on_device.torchscript.pt``: the same model as a scripted :class:`EODRecOnDevice` (``torch.jit.load``
  without this package), whose ``forward(item_seq, k)`` returns the top-k scores and item ids.
- ``size_report.json``: :func:`size_report`.

:func:`load_on_device` rebuilds :class:`EODRecOnDevice` from the artifact; it reproduces the trained model's
``full_sort_predict`` (with RecBole's padding column at -inf) and therefore its top-k. Item ids are RecBole's
internal ids (``dataset.field2id_token['item_id']`` maps them back to tokens); the token list is not part of the
model's size.
"""
import argparse
import json
import math
import os
import sys
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from recbole_compress.model.layers.codebook_embedding import (
    add_pair_interactions,
    code_dtype,
    pair_columns,
    pair_tables,
    pair_interaction_rows,
    paper_compression_ratio,
    use_pair_scorer,
)
from recbole_compress.model.layers.soft_attention_readout import SoftAttentionReadout

ARTIFACT = "eodrec_on_device.pt"
SCRIPTED = "eodrec_on_device.torchscript.pt"
FORMAT = "recbole_compress.eodrec_on_device/1"
__all__: List[str] = ["EODRecOnDevice", "export_eodrec", "load_on_device", "size_report", "size_figures"]
META_KEYS = ("n_items", "hidden_size", "num_codebooks", "codebook_size", "n_layers", "n_heads", "inner_size",
             "hidden_act", "layer_norm_eps", "max_seq_length")


# ----------------------------------------------------------------------------------------------------------------
# a scriptable copy of the backbone (RecBole's TransformerEncoder cannot be scripted); same parameter names
# ----------------------------------------------------------------------------------------------------------------

class _Attention(nn.Module):
    def __init__(self, hidden: int, n_heads: int, eps: float):
        super().__init__()
        self.n_heads = n_heads
        self.head_size = hidden // n_heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, length, hidden = x.shape
        q = self.query(x).view(b, length, self.n_heads, self.head_size).permute(0, 2, 1, 3)
        k = self.key(x).view(b, length, self.n_heads, self.head_size).permute(0, 2, 3, 1)
        v = self.value(x).view(b, length, self.n_heads, self.head_size).permute(0, 2, 1, 3)
        scores = torch.matmul(q, k) / math.sqrt(self.head_size) + mask
        context = torch.matmul(torch.softmax(scores, dim=-1), v).permute(0, 2, 1, 3).reshape(b, length, hidden)
        return self.LayerNorm(self.dense(context) + x)


class _FeedForward(nn.Module):
    def __init__(self, hidden: int, inner: int, act: str, eps: float):
        super().__init__()
        self.act = act
        self.dense_1 = nn.Linear(hidden, inner)
        self.dense_2 = nn.Linear(inner, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dense_1(x)
        if self.act == "gelu":
            h = h * 0.5 * (1.0 + torch.erf(h / math.sqrt(2.0)))
        elif self.act == "relu":
            h = torch.relu(h)
        elif self.act == "swish":
            h = h * torch.sigmoid(h)
        elif self.act == "tanh":
            h = torch.tanh(h)
        else:
            h = torch.sigmoid(h)
        return self.LayerNorm(self.dense_2(h) + x)


class _Layer(nn.Module):
    def __init__(self, hidden: int, n_heads: int, inner: int, act: str, eps: float):
        super().__init__()
        self.multi_head_attention = _Attention(hidden, n_heads, eps)
        self.feed_forward = _FeedForward(hidden, inner, act, eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.feed_forward(self.multi_head_attention(x, mask))


class _Encoder(nn.Module):
    def __init__(self, n_layers: int, hidden: int, n_heads: int, inner: int, act: str, eps: float):
        super().__init__()
        self.layer = nn.ModuleList([_Layer(hidden, n_heads, inner, act, eps) for _ in range(n_layers)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, mask)
        return x


class _Backbone(nn.Module):
    def __init__(self, meta: Dict):
        super().__init__()
        hidden = int(meta["hidden_size"])
        eps = float(meta["layer_norm_eps"])
        self.position_embedding = nn.Embedding(int(meta["max_seq_length"]), hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.trm_encoder = _Encoder(int(meta["n_layers"]), hidden, int(meta["n_heads"]), int(meta["inner_size"]),
                                    str(meta["hidden_act"]), eps)
        self.readout = SoftAttentionReadout(hidden)

    def forward(self, item_emb: torch.Tensor, item_seq: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(item_seq.size(1), dtype=torch.long, device=item_seq.device)
        x = self.LayerNorm(item_emb + self.position_embedding(positions).unsqueeze(0))
        valid = item_seq != 0
        causal = torch.tril(valid.unsqueeze(1).unsqueeze(2).expand(-1, -1, item_seq.size(1), -1))
        mask = torch.where(causal, 0.0, -10000.0)
        return self.readout(self.trm_encoder(x, mask), valid)


class EODRecOnDevice(nn.Module):
    """The exported student: composite item vectors from uint8 codes and codebooks, the backbone, and the decomposed
    full-catalogue scorer. TorchScript-able (``torch.jit.script``).

    ``forward(item_seq, k)`` -> ``(top-k scores, top-k item ids)``; :meth:`scores` gives all ``B x n_items`` scores
    (padding column at -inf, as RecBole's evaluator sets it).
    """

    def __init__(self, meta: Dict, codes: torch.Tensor, codebooks: torch.Tensor, backbone: Dict[str, torch.Tensor],
                 score_rows: int = 8, pair_factors: Optional[torch.Tensor] = None):
        super().__init__()
        self.n_items = int(meta["n_items"])
        self.num_codebooks = int(meta["num_codebooks"])
        self.codebook_size = int(meta["codebook_size"])
        self.hidden_size = int(meta["hidden_size"])
        self.score_rows = int(score_rows)
        self.score_chunk = 128
        # ``code_composition: pair_product``: M//2 x 2 x K x N factors (none: 0 x 2 x K x N)
        if pair_factors is None:
            pair_factors = codebooks.new_zeros(0, 2, self.codebook_size, self.hidden_size)
        self.register_buffer("pair_factors", pair_factors.detach().clone().float())
        self.has_products = pair_factors.shape[0] > 0
        self.use_pair = bool(use_pair_scorer(self.n_items, self.num_codebooks, self.codebook_size)) or self.has_products
        self.register_buffer("codes", codes.clone())
        # the scorer of CodebookEmbedding's ``auto``: ``pair`` (column of every item in the pair-sum tables) on
        # large catalogues, ``embedding_bag`` on small ones
        self.register_buffer("pair_columns", pair_columns(codes.long(), self.codebook_size), persistent=False)
        self.register_buffer("codebooks", codebooks.detach().clone().float())
        self.backbone = _Backbone(meta)
        self.backbone.load_state_dict(backbone, strict=True)
        self.eval()

    def _flat_index(self) -> torch.Tensor:
        offsets = torch.arange(self.num_codebooks, device=self.codes.device) * self.codebook_size
        return self.codes.long() + offsets

    def session(self, item_seq: torch.Tensor) -> torch.Tensor:
        flat = self.codebooks.reshape(-1, self.hidden_size)
        index = self._flat_index()[item_seq]  # B x L x M
        item_emb = F.embedding(index, flat).sum(-2)
        if self.has_products:
            item_emb = item_emb + pair_interaction_rows(self.codes[item_seq].long(), self.pair_factors)
        return self.backbone(item_emb, item_seq)

    def scores(self, item_seq: torch.Tensor) -> torch.Tensor:
        theta = self.session(item_seq)
        b = theta.size(0)
        partial = (theta @ self.codebooks.reshape(-1, self.hidden_size).t()).view(b, self.num_codebooks,
                                                                                   self.codebook_size)
        out = torch.empty(b, self.n_items, dtype=theta.dtype, device=theta.device)
        if not self.use_pair:  # small catalogue: embedding_bag over the transposed partial scores (``auto``)
            partial_t = partial.reshape(b, -1).t().contiguous()
            index = self._flat_index()
            for start in range(0, self.n_items, self.score_chunk):
                end = min(start + self.score_chunk, self.n_items)
                out[:, start:end] = F.embedding_bag(index[start:end], partial_t, mode="sum").t()
            out[:, 0] = -math.inf
            return out
        for start in range(0, b, self.score_rows):
            end = min(start + self.score_rows, b)
            tables = pair_tables(partial[start:end])
            if self.has_products:
                tables = add_pair_interactions(tables, theta[start:end], self.pair_factors)
            block = tables.index_select(1, self.pair_columns[0])
            for g in range(1, self.pair_columns.size(0)):
                block += tables.index_select(1, self.pair_columns[g])
            out[start:end] = block
        out[:, 0] = -math.inf
        return out

    def forward(self, item_seq: torch.Tensor, k: int = 10) -> Tuple[torch.Tensor, torch.Tensor]:
        return torch.topk(self.scores(item_seq), k, dim=1)


# ----------------------------------------------------------------------------------------------------------------
# artifact, size report, export
# ----------------------------------------------------------------------------------------------------------------

def _state_from_model(model):
    cfg = model.backbone_settings
    meta = {
        "n_items": int(model.n_items),
        "hidden_size": int(model.hidden_size),
        "num_codebooks": int(model.num_codebooks),
        "codebook_size": int(model.codebook_size),
        "n_layers": int(cfg["n_layers"]),
        "n_heads": int(cfg["n_heads"]),
        "inner_size": int(cfg["inner_size"]),
        "hidden_act": str(cfg["hidden_act"]),
        "layer_norm_eps": float(cfg["layer_norm_eps"]),
        "max_seq_length": int(model.max_seq_length),
        "code_composition": str(model.item_codebook.composition),
    }
    backbone = {k: v.detach().cpu().clone() for k, v in model.backbone.state_dict().items()}
    layer = model.item_codebook
    factors = None if layer.pair_factors is None else layer.pair_factors.detach().cpu().clone()
    return meta, layer.codes.detach().cpu().clone(), layer.codebooks.detach().cpu().clone(), backbone, factors


def _state_from_checkpoint(checkpoint):
    state, cfg = checkpoint["state_dict"], checkpoint["config"]
    if cfg.get("model") != "EODRec":
        raise ValueError(f"the checkpoint holds a {cfg.get('model')} model, not EODRec")
    codes = state["item_codebook.codes"]
    codebooks = state["item_codebook.codebooks"]
    meta = {
        "n_items": int(codes.shape[0]),
        "hidden_size": int(codebooks.shape[2]),
        "num_codebooks": int(codebooks.shape[0]),
        "codebook_size": int(codebooks.shape[1]),
        "n_layers": int(cfg["n_layers"]),
        "n_heads": int(cfg["n_heads"]),
        "inner_size": int(cfg["inner_size"]),
        "hidden_act": str(cfg["hidden_act"]),
        "layer_norm_eps": float(cfg["layer_norm_eps"]),
        "max_seq_length": int(state["backbone.position_embedding.weight"].shape[0]),
        "code_composition": str(cfg.get("code_composition") or "sum"),
    }
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    return meta, codes, codebooks, backbone, state.get("item_codebook.pair_factors")


def _tensor_bytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def size_figures(meta, codes, codebooks, backbone, teacher_bytes=None, pair_factors=None):
    """Size figures of an exported student (see :func:`size_report`); ``pair_factors`` (``code_composition:
    pair_product``) count with the codebooks."""
    n_items, n, m, k = meta["n_items"], meta["hidden_size"], meta["num_codebooks"], meta["codebook_size"]
    v = n_items - 1
    codes_bytes = codes.numel() * codes.element_size()
    extra_floats = 0 if pair_factors is None else pair_factors.numel()
    codebook_bytes = (codebooks.numel() + extra_floats) * 4
    backbone_bytes = _tensor_bytes(backbone.values())
    export_bytes = codes_bytes + codebook_bytes + backbone_bytes
    dense_table_bytes = n_items * n * 4
    bits = max(1, math.ceil(math.log2(k)))
    report = {
        "n_items (|V|, real items)": v,
        "M (num_codebooks)": m,
        "K (codebook_size)": k,
        "N (hidden_size)": n,
        "paper_compression_ratio": paper_compression_ratio(v, n, m, k, extra_floats),
        "paper_compression_upper_bound (N/M)": n / m,
        "codes_dtype": str(codes.dtype).replace("torch.", ""),
        "bytes_codes": codes_bytes,
        "bytes_codes_bitpacked": math.ceil(n_items * m * bits / 8),
        "bytes_codebooks": codebook_bytes,  # with the pair factors, if any
        "code_composition": meta.get("code_composition", "sum"),
        "bytes_backbone": backbone_bytes,
        "bytes_export": export_bytes,
        "bytes_item_table_dense": dense_table_bytes,
        "item_table_byte_ratio": dense_table_bytes / (codes_bytes + codebook_bytes),
        "item_table_byte_ratio_bitpacked": dense_table_bytes / (math.ceil(n_items * m * bits / 8) + codebook_bytes),
    }
    if teacher_bytes is None:
        teacher_bytes = dense_table_bytes + backbone_bytes
        report["teacher_bytes_source"] = "dense-table equivalent (same backbone, float32 item table)"
    else:
        report["teacher_bytes_source"] = "teacher state_dict"
    report["bytes_teacher"] = int(teacher_bytes)
    report["whole_model_ratio_vs_teacher"] = teacher_bytes / export_bytes
    return report


def size_report(model):
    """Sizes of the on-device student against the dense item table and the teacher.

    Keys: the paper's count-based compression ratio of the item table (Eq. 13, each code one number) and its upper
    bound N/M; bytes of the codes (and bit-packed at ``ceil(log2 K)`` bits), codebooks (float32), backbone and the
    whole export; the item table's byte ratio (dense float32 table / (codes + codebooks)); the teacher's bytes (its
    state_dict when attached, else a dense-table model with the same backbone) and the whole-model ratio.
    """
    from recbole_compress.profiling import state_dict_bytes

    teacher = getattr(model, "teacher", None)
    meta, codes, codebooks, backbone, factors = _state_from_model(model)
    return size_figures(meta, codes, codebooks, backbone, state_dict_bytes(teacher) if teacher is not None else None,
                        factors)


def export_eodrec(model_or_checkpoint, output_dir, script=True):
    """Write the on-device artifact of an EODRec model (or of a plugin checkpoint file) into ``output_dir``.

    Returns:
        dict: ``artifact`` and ``scripted`` paths, ``size_report`` (with the files' bytes on disk).
    """
    if isinstance(model_or_checkpoint, (str, os.PathLike)):
        from recbole_compress.checkpoint import load_checkpoint

        checkpoint = load_checkpoint(model_or_checkpoint)
        meta, codes, codebooks, backbone, factors = _state_from_checkpoint(checkpoint)
        if int(checkpoint["state_dict"].get("stage_flag", torch.tensor(1))) != 1:
            print("warning: the checkpoint is from stage one (codes not frozen yet)", file=sys.stderr)
        report = size_figures(meta, codes, codebooks, backbone, pair_factors=factors)
    else:
        meta, codes, codebooks, backbone, factors = _state_from_model(model_or_checkpoint)
        report = size_report(model_or_checkpoint)
    if codes.dtype != code_dtype(meta["codebook_size"]):
        codes = codes.to(code_dtype(meta["codebook_size"]))
    os.makedirs(output_dir, exist_ok=True)
    artifact = os.path.join(output_dir, ARTIFACT)
    state = {"format": FORMAT, "meta": meta, "codes": codes, "codebooks": codebooks.float(), "backbone": backbone}
    if factors is not None:
        state["pair_factors"] = factors.float()
    torch.save(state, artifact)
    report["file_bytes_artifact"] = os.path.getsize(artifact)
    scripted = None
    if script:
        scripted = os.path.join(output_dir, SCRIPTED)
        module = EODRecOnDevice(meta, codes, codebooks, backbone, pair_factors=factors)
        torch.jit.save(torch.jit.script(module), scripted)
        report["file_bytes_torchscript"] = os.path.getsize(scripted)
    with open(os.path.join(output_dir, "size_report.json"), "w") as f:
        json.dump(report, f, indent=2)
    return {"artifact": artifact, "scripted": scripted, "size_report": report}


def load_on_device(path, script=False):
    """:class:`EODRecOnDevice` from an export folder (or the artifact file); ``script=True`` returns it scripted."""
    if os.path.isdir(path):
        path = os.path.join(path, ARTIFACT)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not an EODRec on-device artifact (format {FORMAT!r})")
    module = EODRecOnDevice(state["meta"], state["codes"], state["codebooks"], state["backbone"],
                            pair_factors=state.get("pair_factors"))
    return torch.jit.script(module) if script else module


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m recbole_compress.export.eodrec",
                                     description="Export a trained EODRec checkpoint for on-device inference.")
    parser.add_argument("--checkpoint", required=True, help="EODRec checkpoint file (recbole-compress format)")
    parser.add_argument("--output_dir", required=True, help="folder to write the artifact into")
    parser.add_argument("--no_script", action="store_true", help="do not write the TorchScript file")
    args = parser.parse_args(argv)
    result = export_eodrec(args.checkpoint, args.output_dir, script=not args.no_script)
    print(json.dumps(result["size_report"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

