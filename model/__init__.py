"""model: the DeepSeek V4 engine, every module in data-flow order.

Describe and load a checkpoint:
  config.py        V4Config (the checkpoint's config.json, key by key) and EngineConfig (how we run it)
  formats.py       what DeepSeek ships: stored names, formats, dtypes, what stays float32
  quant.py         block-scaled FP8/FP4: dequantise, quantise back
  weights.py       safetensors under DeepSeek's or transformers' names, one rename table
  checkpoint.py    what a checkpoint costs (`v4 model info`): parameters, dtypes, state bytes per token
  random_checkpoint.py  random checkpoints for tests and demos (`v4 model init`), nothing downloaded
The network, built on the meta device:
  layers.py        RMS norms and the interleaved partial RoPE (plain and YaRN)
  ops.py           the one dispatch point to kernels/ (Triton on CUDA, the reference elsewhere)
  attention.py     sliding-window MQA plus compressed entries (CSA with the indexer, HCA), sinks
  moe.py           shared expert plus score- or hash-routed experts, clamped SwiGLU; ExpertStrategy
  quantized_linear.py  FP8/FP4 Linear modules holding the weights as shipped; `quantize_model`
  engram.py        the Engram layer: conditional memory by hashed n-gram lookup
  v4.py            Transformer: embedding -> blocks (attention + MoE in mHC) -> head
Run it:
  state.py         DecodeState: what each layer remembers, in the one layout eager and static paths share
  engine.py        Engine: `new_state`, `forward`, `generate` (the API other packages use)
  static_decode.py shape-static batched decoding, captured once as a CUDA graph
  decode_positions.py  what a static step derives from the positions (slots, indices, RoPE), once for all layers, in place
  fused_inputs.py  a layer's projections of one input stacked into one GEMM or FP8 GEMV (views: held once)
  static_verify.py  DraftDecoder: MTP drafts verified two tokens per row in one graphed step, rollback free
  sampling.py      ids from logits: nucleus sampling, and speculative sampling's rejection rule
  speculative.py   speculative generation, greedy or sampled, eager or static (and greedy batches); DraftStats
  piecewise_graph.py  a CUDA graph cut where the host acts between pieces (expert offload)
  offload_plan.py  where the weights go for a GPU budget: dense on the GPU, expert slots, pinned or mmap host
  offload.py       routed experts in host memory with a GPU cache, set in each MoE's ExpertStrategy
  cpu_experts.py   an offload miss computed on the CPU (tiled FP8/FP4 dequantise + matmul); ExpertCosts
  parallel.py      one model over the ranks of one host (torch.distributed), applied after building
  parallel_driver.py  `load(ranks=N)`: this process drives N-1 workers it spawns; DrivenEngine, the Engine API
  parallel_protocol.py  what driver and workers say: replayed calls, states synced where the driver changed them
  parallel_follower.py  a worker: loads its shard, replays the driver's calls, reports its failure
Keep prefilled prompts (the prefix-state store, not the Engram layer above):
  prefix_store.py  decode states of prefilled prompts in memory and on disk, longest prefix wins; PrefillStats
  prefix_store_files.py  entry names (prefix keys), the files the store owns (its manifest), checksums
  prefix_snapshot.py  a decode state as stored tensors, and back
Serve prompts and answers (vLLM's engine core: runner, detokenizer, scheduler):
  runner.py        Runner: one state fed prompts (prefix marks, rewind, the store), decoding answers
  detokenizer.py   sampled ids -> streamed text, ended by stop ids and stop strings
  scheduler.py     continuous batching of many requests on the static decoder (`v4 serve`)

`engine = model.load(path)` (`ranks=N`: over N GPUs); `state = engine.new_state()`; `engine.forward(ids, state)` continues a
sequence; `engine.generate(...)` streams ids. The reference path matches transformers logit for logit.
"""

if __name__ != "v4.model":  # the folder is also reachable from the repository root: one copy only
    raise ImportError(f"import v4.model, not {__name__} (the packages live in the v4 namespace; see README)")

from .config import ConfigError, EngineConfig, V4Config
from .engine import Engine, EngineInputError, load_transformer
from .parallel_driver import load
from .parallel_protocol import ParallelError
from .state import DecodeState
from .v4 import Transformer
from .weights import WeightsError

__all__ = ["ConfigError", "DecodeState", "Engine", "EngineConfig", "EngineInputError", "ParallelError", "Transformer",
           "V4Config", "WeightsError", "load", "load_transformer"]
