"""One rank of tests/model/test_parallel.py, launched by torchrun (gloo, CPU): loads each checkpoint
given sharded over the ranks, runs the checks' forwards and writes what the test compares to
`OUT/rank{r}.pt`. Not a test module itself (torchrun runs it as a script). A checkpoint after
`--quantized` loads with its FP8/FP4 weights kept as stored (as on CUDA), one before it dequantised.

    python -m torch.distributed.run --nproc-per-node 2 tests/model/parallel_worker.py OUT CKPT... [--quantized CKPT...]
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from v4 import model  # noqa: E402
from v4.model import weights  # noqa: E402

PROMPT_SEED, PROMPT_LEN, CHUNKS, NEW_TOKENS = 5, 40, (23, 1, 1, 15), 8
# Ranks against one process with FP8 linears: activations are rounded to e4m3 per 1x128 group, so a
# sharded float32 sum one ulp off can land one value on the next e4m3 step (1e-5 holds otherwise).
FP8_TOLERANCE = 1e-4


def free_port() -> int:
    """A free TCP port on the loopback interface, for a torchrun rendezvous the tests start."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max |ours - theirs| / max |theirs|: how the ranks' logits are compared with one process's."""
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def prompt(vocab: int) -> list[int]:
    return torch.randint(0, vocab, (PROMPT_LEN,), generator=torch.Generator().manual_seed(PROMPT_SEED)).tolist()


def run_checks(engine: model.Engine) -> dict:
    """What the test compares between ranks and one process: whole and chunked logits, greedy tokens,
    the draft head's logits when there is one, and the parameters this process holds."""
    ids = prompt(engine.model.config.vocab_size)
    whole = engine.forward(ids, engine.new_state())
    state, parts, at = engine.new_state(), [], 0
    for size in CHUNKS:
        parts.append(engine.forward(ids[at: at + size], state))
        at += size
    result = {"whole": whole, "chunked": torch.cat(parts),
              "greedy": list(engine.generate(ids, NEW_TOKENS)),
              "parameters": sum(p.numel() for p in engine.model.parameters()),
              "names": sorted(engine.model.state_dict()), **holdings(engine.model)}
    if engine.has_draft_head:
        result["draft"] = engine.draft(state, int(parts[-1][-1].argmax()))
    return result


def holdings(transformer: torch.nn.Module) -> dict:
    """How the model holds its projections: `kinds` (module name -> Linear, FP8Linear or FP4Linear),
    `quantized` (the quantised modules' weights and scales by state_dict name) and `bytes` (all of its
    tensors)."""
    from v4.model.quantized_linear import FP4Linear, FP8Linear

    kinds, quantized = {}, {}
    for name, module in transformer.named_modules():
        if isinstance(module, (torch.nn.Linear, FP8Linear, FP4Linear)):
            kinds[name] = type(module).__name__
        if isinstance(module, (FP8Linear, FP4Linear)):
            quantized.update({f"{name}.weight": module.weight.detach().clone(),
                              f"{name}.scale": module.scale.detach().clone()})
    held = transformer.state_dict().values()
    return {"kinds": kinds, "quantized": quantized, "bytes": sum(t.nbytes for t in held)}


def dequantize_modules(transformer: torch.nn.Module, names: set[str]) -> None:
    """Replace the quantised modules `names` by nn.Linear holding their dequantised weights: how a rank
    holds a slice that would cut scale blocks, so one process can be compared with the ranks."""
    for name in names:
        module = transformer.get_submodule(name)
        linear = torch.nn.Linear(module.in_features, module.out_features, bias=False)
        linear.weight = torch.nn.Parameter(module.dequantized(torch.float32), requires_grad=False)
        owner, _, leaf = name.rpartition(".")
        setattr(transformer.get_submodule(owner), leaf, linear)


def main() -> None:
    out = Path(sys.argv[1])
    checkpoints = [(path, "--quantized" in sys.argv[2:i]) for i, path in enumerate(sys.argv[2:], 2)
                   if path != "--quantized"]
    rank = int(os.environ["RANK"])
    read_keys: list[tuple[str, int | None]] = []
    original = weights.read

    def recording_read(stored, handles):  # which stored tensors (and expert slices) this rank reads
        read_keys.append((stored.key, stored.expert))
        return original(stored, handles)

    weights.read = recording_read
    results = []
    for path, quantized in checkpoints:
        read_keys.clear()
        # torchrun's env: sharded over the ranks
        engine = model.load(path, device="cpu", dtype="float32", quantized=quantized)
        result = run_checks(engine)
        result["read"] = list(read_keys)
        result["world"] = torch.distributed.get_world_size()
        results.append(result)
    torch.save(results, out / f"rank{rank}.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
