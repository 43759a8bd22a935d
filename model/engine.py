"""Engine: a loaded V4 model with the API other packages use (`new_state`, `forward`, `generate`)."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import torch

from .config import EngineConfig, V4Config, context_length
from .offload import expert_caches
from .offload import offload_experts as offload_experts_to_host
from .offload_plan import OffloadPlan, offload_report, plan_checkpoint
from .parallel import Parallel
from .quantized_linear import quantize_for_checkpoint, stack_quantized_experts
from .sampling import Sampling, sample
from .static_decode import StaticDecoder
from .static_verify import DraftDecoder
from .speculative import DraftStats, batch_speculative, eager_speculative, static_speculative
from .state import DecodeState, check_kv_format, mark, new_decode_state, rewind
from .v4 import Transformer
from .weights import LoadProgress, load_into, scan

D = TypeVar("D", bound=StaticDecoder)  # a static decoder class: plain, or the drafting one

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class EngineInputError(ValueError):
    """Token ids or a state the engine cannot use."""


@dataclass(frozen=True, slots=True)
class PrefillChunks:
    """How a long prefill is cut on one device type: the one table of token counts for it."""

    forward_tokens: int  # most tokens per forward: bounds the activations and the attention's score matrices
    step_tokens: int  # tokens per step of a background prefill (Runner.warm): a question waits one step at most


# On CPU the reference path is fastest in short pieces (8.7K tokens, tiny preset: 3.7 s in ~500-token
# pieces, 10.1 s in 2048); on CUDA 4K tokens keep a big model's activations small (vLLM's budget is 8K).
PREFILL_CHUNKS = {"cpu": PrefillChunks(forward_tokens=512, step_tokens=1024),
                  "cuda": PrefillChunks(forward_tokens=4096, step_tokens=8192)}


def prefill_chunks(device: torch.device) -> PrefillChunks:
    """The chunk sizes for `device` (a device type the table lacks gets the CPU's)."""
    return PREFILL_CHUNKS.get(device.type, PREFILL_CHUNKS["cpu"])


BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)  # static decoder sizes: a batch runs in the smallest that holds it


class Engine:
    """The model, its engine settings and tokenizer; states continue sequences token by token."""

    def __init__(self, model: Transformer, config: EngineConfig, tokenizer: object | None = None,
                 checkpoint: Path | None = None, plan: OffloadPlan | None = None) -> None:
        check_kv_format(model.config, config.kv_format)  # at load, not at the first new_state
        self.model = model
        self.config = config
        self.tokenizer = tokenizer
        self.checkpoint = checkpoint  # where the weights came from: the prefix-state store fingerprints it
        self.plan = plan  # where the weights were placed (model/offload_plan.py); None: not planned
        self.id = uuid.uuid4().hex
        self.draft_stats = DraftStats()
        self._decoders: dict[int, StaticDecoder] = {}
        self._draft_decoders: dict[int, DraftDecoder] = {}

    @property
    def device(self) -> torch.device:
        return self.model.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed.weight.dtype

    def offload_report(self) -> dict[str, object] | None:
        """Where the weights live (GiB on the GPU, pinned, memory-mapped; experts per layer resident) and
        the expert caches' hit rate (model/offload_plan.py); None when no expert is offloaded."""
        return offload_report(self.plan, expert_caches(self.model))

    @property
    def context_length(self) -> int:
        """The model's context (`config.context_length`): the most tokens a decode state holds."""
        return context_length(self.model.config, self.config)

    @property
    def has_draft_head(self) -> bool:
        """Whether the checkpoint shipped an MTP block to draft with."""
        return len(self.model.mtp) > 0

    def new_state(self, max_tokens: int | None = None, draft: bool = True) -> DecodeState:
        """An empty state for up to `max_tokens` (default: the model's context) tokens; with `draft`
        it also tracks the first MTP block when there is one, so `draft` can be asked at any point. Its
        entries and indexer keys are kept in the engine's `kv_format`."""
        return new_decode_state(self.model.config, max_tokens or self.context_length, self.id, self.dtype, self.device,
                                mtp_layers=min(len(self.model.mtp), 1) if draft else 0,
                                kv_format=self.config.kv_format)

    def static_decoder(self, batch: int, capacity: int) -> StaticDecoder:
        """The engine's shape-static decoder for at least `batch` rows (CUDA-graphed on a GPU): the
        smallest batch bucket that holds them (vLLM's habit), so a few graph sizes serve every batch;
        rows past `batch` stay inactive. Kept between calls so its graphs are captured once; grown to
        `capacity` tokens per row."""
        return self._bucketed(self._decoders, StaticDecoder, batch, capacity)

    def state_decoder(self, state: DecodeState, capacity: int, draft: bool = False) -> StaticDecoder:
        """The one-row decoder (a DraftDecoder with `draft`) that steps `state` in place, grown to
        `capacity` tokens: nothing is copied in or out around an answer, and the state's memory is
        not held twice. Kept with the state (`state.decoders`), so its graphs are captured once for a
        state that lives long, a session's."""
        kind = "draft" if draft else "plain"
        decoder = state.decoders.get(kind)
        if decoder is None:
            make = DraftDecoder if draft else StaticDecoder
            decoder = state.decoders[kind] = make(self.model, 1, capacity, state=state)
        assert isinstance(decoder, StaticDecoder)
        decoder.grow(capacity)
        return decoder

    def draft_decoder(self, batch: int, capacity: int) -> DraftDecoder:
        """The engine's speculative static decoder (static_verify.py) for at least `batch` rows, kept
        and bucketed as `static_decoder` keeps its decoders."""
        return self._bucketed(self._draft_decoders, DraftDecoder, batch, capacity)

    def _bucketed(self, kept: dict[int, D], make: type[D], batch: int, capacity: int) -> D:
        """The decoder of `make` for the smallest bucket holding `batch` rows, kept in `kept` (its graphs
        are captured once), grown to `capacity` tokens per row."""
        rows = next((bucket for bucket in BATCH_BUCKETS if bucket >= batch), batch)
        decoder = kept.get(rows)
        if decoder is None:
            decoder = kept[rows] = make(self.model, rows, capacity, kv_format=self.config.kv_format)
        decoder.grow(capacity)
        return decoder

    def static_speculation(self, static: bool | None, state: DecodeState) -> bool:
        """Speculative decoding on the draft decoder: default on CUDA, for a state whose MTP layer
        follows it (new_state(draft=True)) in a model with a draft head and no Engram layers."""
        if static is None:
            static = self.device.type == "cuda"
        return static and self.model.config.engram is None and self.has_draft_head and bool(state.mtp_layers)

    def static_decoding(self, static: bool | None, state: DecodeState) -> bool:
        """Static decoding by default on CUDA, where graphs pay; never for Engram layers, or for a
        state whose MTP layers must follow every token."""
        if static is None:
            static = self.device.type == "cuda"
        return static and self.model.config.engram is None and not state.mtp_layers

    def close(self) -> None:
        """Release what the engine holds beyond its tensors: a driven engine's worker processes
        (parallel_driver.py); nothing in one process."""

    @torch.no_grad()
    def forward(self, token_ids: Sequence[int] | torch.Tensor, state: DecodeState,
                last_only: bool = False) -> torch.Tensor:
        """Feed `token_ids`, continuing `state`; logits `[len(token_ids), vocab]` float32 (`[1, vocab]`,
        the last position's, if `last_only`).

        Raises:
            EngineInputError: an empty or out-of-range id, a state of another engine, or a state full.
        """
        ids = self._checked_ids(token_ids, state)
        start = state.num_tokens
        logits, streams = self.model(ids[None], state, return_streams=True, last_only=last_only)
        if state.mtp_layers:
            self._advance_draft_head(ids[None], streams, start, state)
        return logits[0]

    def prefill(self, token_ids: Sequence[int] | torch.Tensor, state: DecodeState,
                chunk_tokens: int | None = None) -> torch.Tensor:
        """Feed a prompt in chunks of `chunk_tokens` tokens (default: the device's PREFILL_CHUNKS),
        continuing `state`; the last position's logits `[vocab]` float32. Activations stay those of one
        chunk, however long the prompt (the state is chunking-proof: the same logits as one forward).

        Raises:
            EngineInputError: as forward(), for the whole prompt before any chunk is fed.
        """
        ids = self._checked_ids(token_ids, state)
        chunk = chunk_tokens or prefill_chunks(self.device).forward_tokens
        for begin in range(0, ids.numel(), chunk):
            logits = self.forward(ids[begin : begin + chunk], state, last_only=True)
        return logits[-1]

    def _checked_ids(self, token_ids: Sequence[int] | torch.Tensor, state: DecodeState) -> torch.Tensor:
        """`token_ids` as a 1-D int64 tensor on the engine's device, once they are known to fit `state`."""
        ids = torch.as_tensor(token_ids, dtype=torch.long, device=self.device).reshape(-1)
        vocab = self.model.config.vocab_size
        if ids.numel() == 0:
            raise EngineInputError("no token ids to feed")
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise EngineInputError(f"token ids must be in [0, {vocab}); got {int(ids.min())}..{int(ids.max())}")
        if state.owner != self.id:
            raise EngineInputError("this state was made by another engine (other weights): make one with new_state()")
        if state.num_tokens + ids.numel() > state.max_tokens:
            raise EngineInputError(f"the state holds {state.max_tokens} tokens; {state.num_tokens} are used and "
                                   f"{ids.numel()} more were given")
        return ids

    def _advance_draft_head(self, ids: torch.Tensor, streams: torch.Tensor, start: int, state: DecodeState) -> None:
        """Feed the MTP block every position whose next token is now known; keep the last one pending."""
        if state.mtp_pending is not None:  # position start-1 was waiting for ids[0]
            inputs, next_ids, position = torch.cat([state.mtp_pending, streams[:, :-1]], dim=1), ids, start - 1
        else:
            inputs, next_ids, position = streams[:, :-1], ids[:, 1:], start
        if inputs.shape[1]:
            self.model.mtp[0](inputs, next_ids, position, state.mtp_layers[0], self.model.embed)
        state.mtp_pending = streams[:, -1:].clone()

    @torch.no_grad()
    def draft(self, state: DecodeState, next_token: int) -> torch.Tensor:
        """The MTP head's logits `[vocab]` float32 for the token after `next_token`, which is to follow
        the state's last token; the state is left as it was.

        Raises:
            EngineInputError: no draft head, an empty state, or a state of another engine.
        """
        if not self.has_draft_head:
            raise EngineInputError("this checkpoint has no MTP block (mtp.*) to draft with")
        if state.owner != self.id:
            raise EngineInputError("this state was made by another engine (other weights): make one with new_state()")
        if state.mtp_pending is None:
            raise EngineInputError("the state is empty: feed tokens with forward() before drafting")
        if not 0 <= next_token < self.model.config.vocab_size:
            raise EngineInputError(f"token id {next_token} is out of range [0, {self.model.config.vocab_size})")
        saved = mark(state, main_layers=False)
        block = self.model.mtp[0]
        ids = torch.tensor([[next_token]], device=self.device)
        out = block(state.mtp_pending, ids, state.num_tokens - 1, state.mtp_layers[0], self.model.embed)
        rewind(state, saved)
        return block.logits(out, self.model.head)[0, -1]

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, stop: Sequence[int] = (), state: DecodeState | None = None,
                 seed: int | None = None, speculative: bool = False, static: bool | None = None) -> Iterator[int]:
        """Stream up to `max_new_tokens` ids after `prompt_ids` (greedy at temperature 0, else nucleus
        sampling seeded by `seed`); a stop id ends the stream after it is yielded. `state`, if given, is
        continued and left holding the prompt and every yielded id but the last. `speculative` drafts
        each second token with the MTP head and verifies it in the same forward, fewer sequential steps
        when drafts hold: greedy, the same ids; sampling, drafts kept or replaced by the rejection rule
        (sampling.py), so the ids follow plain sampling's distribution exactly (the same seed gives the
        same ids on either path, not plain sampling's ids past the first). `static` decodes with the
        shape-static (CUDA-graphed) decoder after an eager prefill: default on CUDA for states without
        MTP layers (speculative: with them); the same ids either way. A caller's `state` is decoded in
        place (`state_decoder`: graphs kept with it); the throwaway state made here goes through the
        engine's bucketed decoder, whose graphs serve every call."""
        in_place = state is not None
        state = state or self.new_state(draft=speculative)
        if speculative:
            sampling = self._sampling(temperature, top_p, seed)
            if self.static_speculation(static, state):
                if state.num_tokens + len(prompt_ids) + max_new_tokens - 1 > state.max_tokens:
                    raise EngineInputError(f"the state holds {state.max_tokens} tokens; {state.num_tokens} are used "
                                           f"and {len(prompt_ids)} + up to {max_new_tokens - 1} more would be fed")
                yield from static_speculative(self, prompt_ids, max_new_tokens, stop, state, sampling, in_place)
            else:
                yield from eager_speculative(self, prompt_ids, max_new_tokens, stop, state, sampling)
            return
        generator = torch.Generator(device=self.device)
        if seed is not None:
            generator.manual_seed(seed)
        logits = self.prefill(prompt_ids, state)
        if self.static_decoding(static, state) and max_new_tokens > 1:
            yield from self._generate_static(logits, max_new_tokens, temperature, top_p, stop, state, generator,
                                             in_place)
            return
        for produced in range(1, max_new_tokens + 1):
            token = sample(logits, temperature, top_p, generator)
            yield token
            if token in stop or produced == max_new_tokens:
                return
            logits = self.forward([token], state)[-1]

    @staticmethod
    def _sampling(temperature: float, top_p: float, seed: int | None) -> Sampling | None:
        """Speculative sampling's settings (None: greedy). Unseeded, the noise starts where an unseeded
        torch.Generator starts, as plain sampling's does."""
        if temperature <= 0:
            return None
        try:
            return Sampling(temperature, top_p, torch.Generator().initial_seed() if seed is None else seed)
        except ValueError as exc:
            raise EngineInputError(str(exc)) from None

    def _generate_static(self, logits: torch.Tensor, max_new_tokens: int, temperature: float, top_p: float,
                         stop: Sequence[int], state: DecodeState, generator: torch.Generator,
                         in_place: bool = False) -> Iterator[int]:
        """Decode on the static decoder from a prefilled `state` (on a decoder over it, `in_place`, or
        copied into the bucketed one's row); the state gets the tokens back even when the caller stops
        early."""
        if state.num_tokens + max_new_tokens - 1 > state.max_tokens:
            raise EngineInputError(f"the state holds {state.max_tokens} tokens; {state.num_tokens} are used and "
                                   f"up to {max_new_tokens - 1} more would be fed")
        room = state.num_tokens + max_new_tokens
        decoder = self.state_decoder(state, room) if in_place else self.static_decoder(1, room)
        decoder.load_row(0, state)
        try:
            for produced in range(1, max_new_tokens + 1):
                token = sample(logits, temperature, top_p, generator)
                yield token
                if token in stop or produced == max_new_tokens:
                    return
                logits = decoder.step([token])[0]
        finally:
            decoder.store_row(0, state)

    @torch.no_grad()
    def generate_batch(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                       stop: Sequence[int] = (), speculative: bool = False) -> list[list[int]]:
        """Greedy continuations of several prompts decoded together, one static step for all rows per
        token (each prompt prefilled eagerly on its own); a row that stops idles, writing nothing.
        `speculative`: one verify step per draft on the draft decoder instead (the same ids)."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise EngineInputError("generate_batch takes one or more non-empty prompts")
        if speculative:
            if not self.has_draft_head or self.model.config.engram is not None:
                raise EngineInputError("speculative batches need an MTP block (mtp.*) and no Engram layers")
            return batch_speculative(self, prompts, max_new_tokens, stop)
        longest = max(len(p) for p in prompts)
        decoder = self.static_decoder(len(prompts), longest + max_new_tokens)
        tokens = []
        for row, prompt in enumerate(prompts):
            state = self.new_state(len(prompt), draft=False)
            tokens.append(int(self.prefill(prompt, state).argmax()))
            decoder.load_row(row, state)
        outputs: list[list[int]] = [[token] for token in tokens]
        active = [token not in stop and max_new_tokens > 1 for token in tokens]
        padding = decoder.batch - len(prompts)  # the bucket's spare rows idle
        while any(active):
            logits = decoder.step(tokens + [0] * padding, active + [False] * padding)
            chosen = logits.argmax(dim=-1).tolist()
            for row in range(len(prompts)):
                if active[row]:
                    tokens[row] = chosen[row]
                    outputs[row].append(chosen[row])
                    active[row] = chosen[row] not in stop and len(outputs[row]) < max_new_tokens
        return outputs


def default_cpu_threads() -> int:
    """Torch threads for a CPU engine: half the cores this process may use, but no more than are idle
    (cores less the 1-minute load average), and at least one. Measured by benchmarks/bench_cpu_threads.py
    (a 641-token prefill, tiny checkpoint): on 16 idle cores 8 threads take 0.12 s, 16 take 0.15 s and 1
    takes 0.23 s; with every core busy, 8 threads take 9.5 s and 1 takes 0.25 s. Spinning threads that
    must share busy cores cost far more than idle cores left unused, so the load decides."""
    import os

    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    idle = available - os.getloadavg()[0] if hasattr(os, "getloadavg") else available
    return max(1, min(available // 2, int(idle)))


def load(path: str | Path, device: str | None = None, dtype: str | torch.dtype | None = None,
         progress: LoadProgress | None = None, parallel: Parallel | bool | None = None,
         quantized: bool | None = None, **engine_options: object) -> Engine:
    """The engine of the checkpoint directory at `path` (config.json, safetensors, optional tokenizer.json).

    `device` defaults to CUDA when available; `dtype` to bfloat16 on CUDA and float32 on CPU. The model
    is built on the meta device and filled tensor by tensor from the memory-mapped shards; `progress`
    hears (shard, bytes done, bytes in shard) after each tensor.

    `parallel`: shard the model over the ranks of a process group (model/parallel.py): a Parallel, True
    (the group torchrun's environment describes, initialised if needed), None (the same, but only when
    WORLD_SIZE > 1, i.e. a torchrun launch; otherwise one process, as always) or False (one process).
    Each rank reads only its share; on CUDA, rank r runs on GPU LOCAL_RANK.

    `quantized`: keep the checkpoint's FP8/FP4 weights as stored (model/quantized_linear.py) instead of
    dequantising them to `dtype`; None: on CUDA when config.json has a quantization_config (each rank
    then holds its share as stored).
    (`v4.model.load` is parallel_driver.load: this, or the same over several processes with `ranks`.)
    """
    from dataclasses import fields

    path = Path(path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if parallel is None or parallel is True:
        from .parallel import current, init_from_env

        parallel = current() or init_from_env(str(device))
    if not parallel:
        parallel = None
    elif str(device) == "cuda":
        device = f"cuda:{parallel.local_rank}"
    if dtype is None:
        dtype = "bfloat16" if str(device).startswith("cuda") else "float32"
    dtype_name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    allowed = {f.name for f in fields(EngineConfig)}
    unknown = sorted(set(engine_options) - allowed)
    if unknown:
        raise TypeError(f"unknown engine options {unknown}; expected some of {sorted(allowed)}")
    config = EngineConfig(dtype=dtype_name, device=str(device), **engine_options)  # type: ignore[arg-type]
    if config.device == "cpu":  # torch's default (every core) stalls on a machine doing other work too
        torch.set_num_threads(config.cpu_threads or default_cpu_threads())
    else:
        prefer_expandable_segments()
    plan, stored = (None, None) if parallel is not None else _plan(path, config, quantized)
    slots = config.offload_experts if plan is None else plan.slots
    model = load_transformer(path, DTYPES[config.dtype], config.device, progress, config.engram_table_device,
                             parallel, quantized, slots, map_experts=plan is not None and plan.host == "mmap",
                             stored=stored)
    return Engine(model, config, _tokenizer(path), path.resolve(), plan)


def _plan(path: Path, config: EngineConfig, quantized: bool | None) -> tuple[OffloadPlan | None, dict | None]:
    """Where the weights go (model/offload_plan.py): planned for a GPU-memory budget (`gpu_memory_gb`, by
    default what is free on a CUDA device), or around `offload_experts` per layer; None on a CPU engine
    given neither (nothing to plan: the weights are in host memory already). With it, the checkpoint's
    map the plan read (weights.scan), for the loader to use rather than read the headers again."""
    device = torch.device(config.device)
    if config.offload_experts is None and config.gpu_memory_gb is None and device.type != "cuda":
        return None, None
    stored = scan(path)
    if quantized is None:
        quantized = default_quantized(V4Config.from_json(path), device)
    budget = None if config.gpu_memory_gb is None else int(config.gpu_memory_gb * 2**30)
    return plan_checkpoint(path, DTYPES[config.dtype], quantized, device, config.offload_experts, budget,
                           fp8_state=config.kv_format == "fp8", stored=stored), stored


def prefer_expandable_segments() -> None:
    """Let the CUDA allocator grow segments in place (expandable_segments) unless the user's allocator
    settings say otherwise. With fixed segments, an offloaded 24 GiB budget ran out of memory on the H100
    with 4.5 GiB reserved but unusable (benchmarks/results/offload_budgets_h100_run1.json); vLLM turns
    this on by default for the same reason. Set through torch's allocator API, so the order of imports
    does not matter; a torch without it keeps its default. (torch 2.11 deprecates the CUDA-only setter
    for the accelerator-wide one, which it then calls: the newer is tried first.)"""
    if any("expandable_segments" in os.environ.get(name, "") for name in ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")):
        return
    setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None) or \
        getattr(torch.cuda.memory, "_set_allocator_settings", None)
    if setter is not None:
        setter("expandable_segments:True")


def default_quantized(config: V4Config, device: str | torch.device) -> bool:
    """`load(quantized=None)`: keep FP8/FP4 weights as stored on CUDA for a checkpoint whose config has a
    quantization_config (in one process or on each rank of several)."""
    return str(device).startswith("cuda") and bool(config.quantization_config)


def load_transformer(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                     progress: LoadProgress | None = None, table_device: str | None = None,
                     parallel: Parallel | None = None, quantized: bool | None = False,
                     offload_experts: int | None = None, map_experts: bool = False,
                     stored: dict | None = None) -> Transformer:
    """The model of the checkpoint at `path`, built on the meta device and filled from its safetensors
    (with its MTP blocks when the checkpoint ships them); Engram tables go to `table_device` if given.
    With `parallel`, only this rank's shard (model/parallel.py) is built and read. With `quantized`, the
    weights stored with a scale are placed as stored, in FP8Linear/FP4Linear modules (None: on CUDA
    for a checkpoint whose config has a quantization_config); under `parallel` each rank holds its
    experts and its slices so, a slice that would cut FP8 scale blocks being dequantised instead
    (quantized_linear.quantize_for_checkpoint). With `offload_experts`
    the routed experts are read into host memory and that many per layer are cached on `device`
    (model/offload.py): for models larger than the GPU; `map_experts` leaves them memory-mapped from the
    checkpoint files rather than copied (a host whose memory cannot hold them)."""
    path = Path(path)
    config = V4Config.from_json(path)
    stored = scan(path) if stored is None else stored  # `load` passes the map it read for the plan
    if quantized is None:
        quantized = default_quantized(config, device)
    with torch.device("meta"):
        model = Transformer(config, with_mtp=any(name.startswith("mtp.") for name in stored))
    if parallel is not None:
        from .parallel import shard_model, shard_stored

        stored = shard_stored(stored, model, shard_model(model, parallel))
    as_stored: set[str] = set()
    if quantized:
        stored, as_stored = quantize_for_checkpoint(model, stored)
    if offload_experts is not None and parallel is not None:
        raise NotImplementedError("expert offload runs in one process; expert parallelism already splits the experts")
    load_into(model, path, dtype, device, progress, stored, table_device, as_stored,
              experts_on_host=offload_experts is not None, map_experts=map_experts and offload_experts is not None)
    if offload_experts is None or not map_experts:  # mapped experts stay as the files hold them, unstacked
        stack_quantized_experts(model)
    if offload_experts is not None:
        offload_experts_to_host(model, offload_experts, device, mapped=map_experts)
    return model.eval()


def _tokenizer(path: Path) -> object | None:
    file = path / "tokenizer.json"
    if not file.exists():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(file))
