"""One rank of tests/model/test_parallel.py, launched by torchrun (gloo, CPU): loads each checkpoint
given sharded over the ranks, runs the checks' forwards and writes what the test compares to
`OUT/rank{r}.pt`. Not a test module itself (torchrun runs it as a script).

    python -m torch.distributed.run --nproc-per-node 2 tests/model/parallel_worker.py OUT CKPT...
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from v4 import model  # noqa: E402
from v4.model import weights  # noqa: E402

PROMPT_SEED, PROMPT_LEN, CHUNKS, NEW_TOKENS = 5, 40, (23, 1, 1, 15), 8


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
              "names": sorted(engine.model.state_dict())}
    if engine.has_draft_head:
        result["draft"] = engine.draft(state, int(parts[-1][-1].argmax()))
    return result


def main() -> None:
    out, checkpoints = Path(sys.argv[1]), sys.argv[2:]
    rank = int(os.environ["RANK"])
    read_keys: list[tuple[str, int | None]] = []
    original = weights.read

    def recording_read(stored, handles):  # which stored tensors (and expert slices) this rank reads
        read_keys.append((stored.key, stored.expert))
        return original(stored, handles)

    weights.read = recording_read
    results = []
    for path in checkpoints:
        read_keys.clear()
        engine = model.load(path, device="cpu", dtype="float32")  # torchrun's env: sharded over the ranks
        result = run_checks(engine)
        result["read"] = list(read_keys)
        result["world"] = torch.distributed.get_world_size()
        results.append(result)
    torch.save(results, out / f"rank{rank}.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
