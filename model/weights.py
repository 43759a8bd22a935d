"""Checkpoint loading: safetensors under DeepSeek's native names or transformers' names, one rename table.

Loading is lazy and checked first: the headers of every shard are read (names, shapes, dtypes), every
tensor the model needs is matched to its stored tensor (and its FP8/FP4 scale), and only when nothing is
missing, extra or mis-shaped are tensors read, one at a time, straight from the memory-mapped files onto
the target device. A checkpoint far larger than memory is never read whole, and a bad one is a
WeightsError naming the tensor before anything is placed.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Collection, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from .formats import DTYPE_BYTES, FP4_DTYPES, PACKED_FP4_DTYPES, STORED_DTYPES, is_routed_expert, keeps_float32

INTEGER_DTYPES = ("I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL")
# (shard file name, bytes read so far, bytes in the shard): one call per tensor read.
LoadProgress = Callable[[str, int, int], None]


class WeightsError(ValueError):
    """A checkpoint that does not match the model; names the tensor or file."""


# transformers name (after dropping `model.`) -> native name, rule by rule in order. It covers both the
# names of transformers' modules and the near-native names its `save_pretrained` writes.
HF_TO_NATIVE: list[tuple[str, str]] = [
    (r"^embed_tokens\.", "embed."),
    (r"^lm_head\.", "head."),
    (r"^hc_head\.hc_(fn|base|scale)$", r"hc_head_\1"),
    (r"\.self_attn\.compressor\.indexer\.scorer\.weights_proj\.", ".attn.indexer.weights_proj."),
    (r"\.self_attn\.compressor\.indexer\.q_b_proj\.", ".attn.indexer.wq_b."),
    (r"\.self_attn\.compressor\.indexer\.", ".attn.indexer.compressor."),
    (r"\.self_attn\.", ".attn."),
    (r"\.mlp\.", ".ffn."),
    (r"\.input_layernorm\.", ".attn_norm."),
    (r"\.post_attention_layernorm\.", ".ffn_norm."),
    (r"\.(attn|ffn)_hc\.(fn|base|scale)$", r".hc_\1_\2"),
    (r"\.attn\.sinks$", ".attn.attn_sink"),
    (r"\.compressor\.kv_norm\.", ".compressor.norm."),
    (r"\.compressor\.position_bias$", ".compressor.ape"),
    (r"\.compressor\.kv_proj\.", ".compressor.wkv."),
    (r"\.compressor\.gate_proj\.", ".compressor.wgate."),
    (r"\.attn\.q_a_proj\.", ".attn.wq_a."),
    (r"\.attn\.q_a_norm\.", ".attn.q_norm."),
    (r"\.attn\.norm\.", ".attn.kv_norm."),  # how transformers' save_pretrained spells the KV norm
    (r"\.attn\.q_b_proj\.", ".attn.wq_b."),
    (r"\.attn\.kv_proj\.", ".attn.wkv."),
    (r"\.attn\.o_a_proj\.", ".attn.wo_a."),
    (r"\.attn\.o_b_proj\.", ".attn.wo_b."),
    (r"\.ffn\.gate\.e_score_correction_bias$", ".ffn.gate.bias"),
    (r"\.ffn\.shared_experts\.gate_proj\.", ".ffn.shared_experts.w1."),
    (r"\.ffn\.shared_experts\.down_proj\.", ".ffn.shared_experts.w2."),
    (r"\.ffn\.shared_experts\.up_proj\.", ".ffn.shared_experts.w3."),
    (r"\.weight_scale_inv$", ".scale"),  # HF fine-grained FP8 spelling of DeepSeek's block scales
]
FUSED_EXPERTS = re.compile(r"^(layers\.\d+\.ffn\.experts)\.(gate_up_proj|down_proj)$")


def native_name(name: str) -> str:
    """The native name of a transformers tensor name (native names come back unchanged)."""
    if name.startswith("model."):
        name = name[len("model."):]
    for pattern, replacement in HF_TO_NATIVE:
        name = re.sub(pattern, replacement, name)
    return name


def index_map(path: Path) -> dict[str, str] | None:
    """The index's weight_map (stored tensor name -> shard file name), or None without an index."""
    index = path / "model.safetensors.index.json"
    if not index.exists():
        return None
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
            raise TypeError("weight_map must map tensor names to file names")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise WeightsError(f"{index}: not a safetensors index ({exc})") from exc
    return weight_map


def checkpoint_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory (single file or a sharded index)."""
    weight_map = index_map(path)
    if weight_map is not None:
        files = [path / name for name in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.exists()]
        if absent:
            raise WeightsError(f"{path / 'model.safetensors.index.json'} names shards that are not there: "
                               f"{', '.join(absent)}")
        return files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise WeightsError(f"{path}: no *.safetensors files")
    return files


@dataclass(frozen=True, slots=True)
class Stored:
    """Where one model tensor is: a stored tensor, or one expert's slice (and half) of a fused one."""

    file: Path
    key: str
    shape: tuple[int, ...]  # logical shape (FP4 unpacked)
    dtype: str  # safetensors dtype string
    nbytes: int
    expert: int | None = None
    half: int | None = None  # 0: gate (w1), 1: up (w3) of a fused gate_up_proj
    scale: Stored | None = None
    narrow: tuple[int, int, int] | None = None  # (dim, start, end): the part one rank reads (model/parallel.py)


def scan(path: Path) -> dict[str, Stored]:
    """Native name -> Stored for every tensor of the checkpoint, from the headers alone."""
    raw: dict[str, Stored] = {}
    for file in checkpoint_files(path):
        try:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    sliced = handle.get_slice(key)
                    shape, dtype = tuple(sliced.get_shape()), sliced.get_dtype()
                    name = native_name(key)
                    if name in raw:
                        raise WeightsError(f"tensor {name} is stored twice ({raw[name].file.name}, {file.name})")
                    raw[name] = Stored(file, key, shape, dtype, math.ceil(math.prod(shape) * DTYPE_BYTES.get(dtype, 1)))
        except WeightsError:
            raise
        except Exception as exc:  # safetensors raises its own error types for truncated/corrupt headers
            raise WeightsError(f"{file}: cannot read safetensors ({exc})") from exc
    _check_index(path, raw)
    found: dict[str, Stored] = {}
    for name, stored in raw.items():
        if name.endswith(".scale") and name.removesuffix(".scale") + ".weight" in raw:
            continue  # read with its weight
        scale = raw.get(name.removesuffix(".weight") + ".scale") if name.endswith(".weight") else None
        if scale is None and (stored.dtype in ("F8_E4M3", "F4") or
                              (stored.dtype in PACKED_FP4_DTYPES and name.endswith(".weight"))):
            raise WeightsError(f"tensor {name} is quantised ({stored.dtype}) but the checkpoint has no "
                               f"{name.removesuffix('.weight')}.scale (or .weight_scale_inv) for it")
        if scale is not None:
            shape = stored.shape
            if stored.dtype in PACKED_FP4_DTYPES:  # FP4 packed two per byte: the logical rows are twice as wide
                shape = (*shape[:-1], shape[-1] * 2)
            _check_scale_shape(name, shape, stored.dtype, scale.shape, scale.dtype)
            stored = Stored(stored.file, stored.key, shape, stored.dtype, stored.nbytes + scale.nbytes, scale=scale)
        fused = FUSED_EXPERTS.match(name)
        if fused is None:
            found[name] = stored
            continue
        if scale is not None or len(stored.shape) != 3:
            raise WeightsError(f"fused expert tensor {stored.key} must be an unquantised [experts, out, in] tensor")
        prefix, kind = fused.groups()
        experts, rows, cols = stored.shape
        each = stored.nbytes // experts
        for expert in range(experts):
            if kind == "down_proj":
                found[f"{prefix}.{expert}.w2.weight"] = Stored(stored.file, stored.key, (rows, cols), stored.dtype,
                                                               each, expert)
            else:
                for half, leaf in ((0, "w1"), (1, "w3")):
                    found[f"{prefix}.{expert}.{leaf}.weight"] = Stored(
                        stored.file, stored.key, (rows // 2, cols), stored.dtype, each // 2, expert, half)
    return found


def _check_index(path: Path, raw: dict[str, Stored]) -> None:
    """Every tensor the index lists is in the shard it names (a shard replaced or cut short by a broken
    download is named with the first tensor it lacks, not found later as a missing parameter)."""
    weight_map = index_map(path) or {}
    by_key = {stored.key: stored.file.name for stored in raw.values()}
    for key, file in weight_map.items():
        if by_key.get(key) != file:
            where = f"it is in {by_key[key]}" if key in by_key else "no shard holds it"
            raise WeightsError(f"tensor {key}: the index lists it in {file}, but {where}")


# The stored scale dtypes each quantised format takes (model/quant.py's FP8_SCALE_DTYPES, FP4_SCALE_DTYPES).
SCALE_DTYPES = {"FP8": ("F8_E8M0", "F32", "BF16"), "FP4": ("F8_E8M0", "F32")}


def _check_scale_shape(name: str, shape: tuple[int, ...], dtype: str, scale: tuple[int, ...],
                       scale_dtype: str) -> None:
    """Scales are checked with the headers, so a bad one stops the load before anything is placed:
    FP4 has one scale per 1x32 group of a row, FP8 one per 128x128 block, each in the dtypes its
    format takes."""
    from .quant import FP4_GROUP, FP8_BLOCK

    kind = "FP4" if dtype in FP4_DTYPES else "FP8"
    if scale_dtype not in SCALE_DTYPES[kind]:
        raise WeightsError(f"tensor {name}: its scale is {scale_dtype}; a {dtype} weight takes "
                           f"{' or '.join(SCALE_DTYPES[kind])} scales")
    if len(shape) < 2:
        raise WeightsError(f"tensor {name} has a scale but is not a matrix (shape {shape})")
    *lead, rows, cols = shape
    if dtype in FP4_DTYPES:
        expected = (*lead, rows, -(-cols // FP4_GROUP))
    else:
        expected = (*lead, -(-rows // FP8_BLOCK), -(-cols // FP8_BLOCK))
    if tuple(scale) != expected:
        raise WeightsError(f"tensor {name}: its scale has shape {tuple(scale)}, a {dtype} weight of shape "
                           f"{shape} needs {expected}")


def scale_slice(item: Stored) -> Stored | None:
    """The scale of quantised weight `item` cut as `item.narrow` cuts the weight (one rank's slice,
    model/parallel.py), or None when the slice would cut a scale block, which has to be dequantised
    whole instead. A slice that starts and ends on block boundaries (128 for FP8; FP4's 1x32 groups are
    cut along rows only) takes whole scale blocks, each row keeping its block's scale. Under an even
    split that is every rank or none (the width decides), so the ranks hold such a weight alike."""
    from .quant import FP8_BLOCK

    if item.scale is None or item.narrow is None:
        return item.scale
    dim, start, end = item.narrow
    fp4, last = item.dtype in FP4_DTYPES, len(item.shape) - 1
    if fp4 and dim == last:
        return None  # packed columns: read() would cut the stored bytes at logical indices
    block = FP8_BLOCK if not fp4 and dim >= last - 1 else 1  # leading (stacked) dims have a scale each
    if start % block or end % block:
        return None
    shape = list(item.scale.shape)
    shape[dim] = (end - start) // block
    return replace(item.scale, shape=tuple(shape), narrow=(dim, start // block, end // block),
                   nbytes=math.ceil(math.prod(shape) * DTYPE_BYTES.get(item.scale.dtype, 1)))


def keep_quantized(stored: dict[str, Stored], names: Collection[str]) -> dict[str, Stored]:
    """`stored` with the quantised weights `names` read as stored, not dequantised: each takes its packed
    shape and gives its scale back as an entry of its own, `X.scale` (the name DeepSeek ships it under).
    A weight one rank reads a slice of (`narrow`) takes the matching slice of its scale (`scale_slice`)."""
    out = dict(stored)
    for name in names:
        item = stored[name]
        if item.scale is None or not name.endswith(".weight"):
            raise WeightsError(f"tensor {name} is not stored with a scale, so it cannot be kept quantised")
        scale = scale_slice(item)
        if scale is None:
            raise WeightsError(f"tensor {name}: the slice {item.narrow} (dim, start, end) cuts its scale blocks, "
                               "so it cannot be kept quantised")
        shape = item.shape
        if item.dtype in FP4_DTYPES:  # logical shapes count unpacked columns; each packed element is a byte
            shape = (*shape[:-1], shape[-1] // 2)
        weight_bytes = item.nbytes - item.scale.nbytes if item.narrow is None else \
            math.ceil(math.prod(shape) * (1 if item.dtype in FP4_DTYPES else DTYPE_BYTES.get(item.dtype, 1)))
        out[name] = replace(item, shape=shape, nbytes=weight_bytes, scale=None)
        out[name.removesuffix("weight") + "scale"] = scale
    return out


def has_mtp(path: Path) -> bool:
    """Whether the checkpoint ships MTP blocks (`mtp.*`); transformers' saves drop them."""
    return any(name.startswith("mtp.") for name in scan(path))


def match(model: nn.Module, stored: dict[str, Stored], path: Path) -> None:
    """Check that `stored` has every parameter and persistent buffer of `model`, with its shape, and
    nothing else; a WeightsError names the first problems otherwise."""
    expected = model.state_dict()
    extra = sorted(set(stored) - set(expected))
    if extra:
        raise WeightsError(f"unexpected tensor {_listed(extra)} in {path}")
    missing = sorted(set(expected) - set(stored))
    if missing:
        raise WeightsError(f"checkpoint {path} lacks {_listed(missing)}")
    for name, tensor in expected.items():
        if tuple(stored[name].shape) != tuple(tensor.shape):
            raise WeightsError(f"tensor {name} has shape {stored[name].shape}, the model expects "
                               f"{tuple(tensor.shape)}")
        integer = stored[name].dtype in INTEGER_DTYPES and stored[name].scale is None  # FP4 bytes have a scale
        if integer == tensor.is_floating_point():
            raise WeightsError(f"tensor {name} is stored as {stored[name].dtype}, the model expects "
                               f"{'floating point values' if integer else 'integers (a lookup table)'}")


def _listed(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def read(stored: Stored, handles: dict[Path, object]) -> torch.Tensor:
    """The tensor `stored` points at, dequantised to float32 if it has a scale."""
    handle = handles[stored.file]
    try:
        if stored.narrow is not None and stored.expert is None and stored.scale is None:
            dim, start, end = stored.narrow  # read only the slice from the memory-mapped file
            return handle.get_slice(stored.key)[(slice(None),) * dim + (slice(start, end),)]  # type: ignore[attr-defined]
        if stored.expert is None:
            tensor = handle.get_tensor(stored.key)  # type: ignore[attr-defined]
        else:
            tensor = handle.get_slice(stored.key)[stored.expert]  # type: ignore[attr-defined]
            if stored.half is not None:
                tensor = tensor.chunk(2, dim=0)[stored.half]
            tensor = tensor.contiguous()  # a view of the fused tensor would take other matmul paths
        if stored.scale is not None:
            from .quant import dequantize

            scale = handles[stored.scale.file].get_tensor(stored.scale.key)  # type: ignore[attr-defined]
            tensor = dequantize(tensor, scale, native_name(stored.key))
        if stored.narrow is not None:  # a quantised or fused tensor: dequantised whole, then sliced
            dim, start, end = stored.narrow
            tensor = tensor.narrow(dim, start, end - start).contiguous()
    except WeightsError:
        raise
    except Exception as exc:  # truncated data, a bad scale: name the tensor
        raise WeightsError(f"{stored.file}: tensor {stored.key} cannot be read ({exc})") from exc
    return tensor


def mappable(stored: Stored, quantized: bool, dtype: torch.dtype) -> bool:
    """Whether tensor `stored` (as `scan` gives it) can be placed as a memory map of its file: a whole
    stored tensor (not one expert of a fused one), kept quantised (`quantized`) or stored in `dtype`."""
    if stored.expert is not None or stored.narrow is not None:
        return False
    return quantized if stored.scale is not None else STORED_DTYPES.get(stored.dtype) == dtype


def mapped(stored: Stored, files: dict[Path, tuple[torch.Tensor, int, dict]]) -> torch.Tensor:
    """Tensor `stored` exactly as stored (no scale: `keep_quantized` splits those), as a view of its file
    memory-mapped copy-on-write: pages are read when first touched and the kernel may drop them again,
    so host memory need not hold the checkpoint. `files` caches each file's map (file, data start, header).
    """
    if stored.file not in files:
        with open(stored.file, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(size))
        storage = torch.UntypedStorage.from_file(str(stored.file), shared=False, nbytes=stored.file.stat().st_size)
        files[stored.file] = (torch.empty(0, dtype=torch.uint8).set_(storage), 8 + size, header)
    data, start, header = files[stored.file]
    begin, end = header[stored.key]["data_offsets"]
    dtype = STORED_DTYPES.get(stored.dtype)
    if dtype is None or stored.scale is not None or stored.expert is not None or stored.narrow is not None:
        raise WeightsError(f"tensor {stored.key} ({stored.dtype}) cannot be placed as a map of {stored.file.name}")
    try:
        return data[start + begin : start + end].view(dtype).view(stored.shape)
    except RuntimeError as exc:  # an offset the dtype cannot view (a writer that does not align)
        raise WeightsError(f"tensor {stored.key} cannot be mapped from {stored.file.name} ({exc})") from exc


def _open_all(stack: ExitStack, stored: dict[str, Stored]) -> dict[Path, object]:
    files = {s.file for s in stored.values()} | {s.scale.file for s in stored.values() if s.scale is not None}
    return {file: stack.enter_context(safe_open(str(file), framework="pt")) for file in sorted(files)}


def load_into(model: nn.Module, path: Path, dtype: torch.dtype, device: torch.device | str = "cpu",
              progress: LoadProgress | None = None, stored: dict[str, Stored] | None = None,
              table_device: torch.device | str | None = None, as_stored: Collection[str] = (),
              experts_on_host: bool = False, map_experts: bool = False) -> None:
    """Fill every parameter and persistent buffer of `model` (which may live on the meta device) from
    the checkpoint at `path`, tensor by tensor, onto `device`.

    Norm weights, mHC parameters, sinks and the gate bias stay float32 (as DeepSeek keeps them);
    other floating tensors take `dtype`. Nothing is placed unless the whole checkpoint matches.
    Engram tables go straight to `table_device` (host memory) when given, never through `device`.
    Tensors named in `as_stored` (quantised weights and their scales, see `keep_quantized`) are placed
    with their stored dtype and bytes. With `experts_on_host` the routed experts' tensors stay in host
    memory (model/offload.py then caches some of them on `device`), so a model larger than the GPU loads;
    with `map_experts` too, they are views of the memory-mapped files (`mapped`) instead of copies, for a
    host whose memory cannot hold them (model/offload_plan.py says when).
    """
    stored = scan(path) if stored is None else stored
    match(model, stored, path)
    by_file: dict[Path, list[str]] = {}
    for name in model.state_dict():
        by_file.setdefault(stored[name].file, []).append(name)
    maps: dict[Path, tuple[torch.Tensor, int, dict]] = {}
    with ExitStack() as stack:
        handles = _open_all(stack, stored)
        for file, names in by_file.items():
            total, done = sum(stored[n].nbytes for n in names), 0
            for name in names:
                if map_experts and is_routed_expert(name):
                    _assign(model, name, _mapped_as_placed(name, stored[name], maps, name in as_stored, dtype))
                else:
                    tensor = read(stored[name], handles)
                    if name in as_stored:
                        tensor = tensor.view(torch.int8) if tensor.dtype == torch.float4_e2m1fn_x2 else tensor
                    elif tensor.is_floating_point():
                        tensor = tensor.to(torch.float32 if keeps_float32(name) else dtype)
                    on_table_device = table_device is not None and name.endswith(".engram.embed.weight")
                    target = table_device if on_table_device else "cpu" if experts_on_host and \
                        is_routed_expert(name) else device
                    _assign(model, name, tensor.to(target))
                done += stored[name].nbytes
                if progress is not None:
                    progress(file.name, done, total)
    if hasattr(model, "materialize_buffers"):
        model.materialize_buffers(device)
    if table_device is not None:
        for module in model.modules():
            if hasattr(module, "place_tables"):
                module.place_tables(table_device)


def _mapped_as_placed(name: str, stored: Stored, maps: dict[Path, tuple[torch.Tensor, int, dict]], as_stored: bool,
                      dtype: torch.dtype) -> torch.Tensor:
    """`mapped`, for a tensor the loader would place in the dtype it is stored in (else a WeightsError)."""
    placed = STORED_DTYPES.get(stored.dtype)
    if not as_stored and placed != dtype:
        raise WeightsError(f"tensor {name} is stored as {stored.dtype} but would be held as {dtype}: only tensors "
                           "placed as stored can stay memory-mapped (load the quantised checkpoint quantized)")
    return mapped(stored, maps)


def _assign(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner, _, leaf = name.rpartition(".")
    module = model.get_submodule(owner) if owner else model
    if leaf in module._parameters:
        module._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)
    else:
        module._buffers[leaf] = tensor


def read_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(native name, tensor) for every tensor of the checkpoint (fused experts split, FP8/FP4
    dequantised to float32): for tools and tests; loading uses `load_into`."""
    stored = scan(path)
    with ExitStack() as stack:
        handles = _open_all(stack, stored)
        for name, item in stored.items():
            yield name, read(item, handles)

