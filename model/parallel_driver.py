"""One command over several GPUs (issue 28): the process the user started drives, and N-1 worker
processes it spawns (parallel_follower.py) follow its steps, each holding its shard of the model
(parallel.py: expert-parallel MoE, tensor-parallel attention, vocabulary-parallel embedding and head).

The driver loads rank 0's shard and returns a `DrivenEngine`: the Engine API unchanged, so the runner,
the scheduler, the prefix-state store and the front ends use it as they use a whole engine. Each of its
calls that runs the model (forward, prefill, draft, a static decoder's step, ...) is sent to the workers
as a small message before the driver runs it (parallel_protocol.py), and every rank runs the same
collectives in the same order. Only the driver samples, prints, talks to the user and writes the
prefix-state store; a worker's stdout and stderr go to /dev/null.

Start: a TCPStore on a free loopback port, workers spawned (torch.multiprocessing, "spawn", safe with
CUDA), each says hello over its report pipe, then all ranks make the process group (NCCL on CUDA, gloo
on CPU; not torch's default group, so nothing process-wide changes) and load their shards side by side.

Failure, never a hang: a thread watches every worker's process and report pipe. A worker that dies or
fails stops the engine: its collectives are aborted, the other workers are ended, and the driver's
current and later calls raise ParallelError naming the rank and why. Collectives time out
(`timeout_s`). Workers exit when the driver closes the engine, when its pipes close, or when its
process is gone; `close()` (also run when the engine is collected, and at exit) stops them.
"""

from __future__ import annotations

import collections
import datetime
import os
import signal
import threading
import weakref
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from pathlib import Path

import torch

from .config import V4Config
from .engine import Engine, EngineInputError, default_quantized
from .engine import load as engine_load
from .parallel import NO_MULTICAST, Parallel
from .parallel_follower import follow
from .parallel_protocol import (DECODER_CALLS, ENGINE, Call, Counters, Free, NewState, ParallelError, Stop, Sync,
                                changed_parts, counters, decoder_key, encode, make_group, share_parts, states_in)
from .state import DecodeState
from .weights import LoadProgress

RENDEZVOUS_S = 120.0  # a worker's start: importing torch and v4, joining the group
TIMEOUT_S = 600.0  # a collective (a first step may autotune kernels while the other ranks wait)
STOP_S = 5.0  # a worker told to stop, before it is terminated
FAILURE_GRACE_S = 2.0  # a failed collective: how long to wait for the watcher to name the worker that died
FITS_ONE_GPU = 0.9  # of GPU 0's free memory a checkpoint may take before the default spreads it over every GPU


def load(path: str | Path, device: str | None = None, dtype: str | torch.dtype | None = None,
         progress: LoadProgress | None = None, parallel: Parallel | bool | None = None,
         quantized: bool | None = None, ranks: int | None = 1, **engine_options: object) -> Engine:
    """`v4.model.load`: `engine.load` (one process, or the group `parallel` names), or with `ranks` > 1
    the same over that many processes of this host, this one driving the others it spawns (`load_driven`;
    a script that calls it keeps its top level under `if __name__ == "__main__":`, as any spawn needs).
    `ranks` None: `default_ranks` (every GPU when the checkpoint does not fit one, else 1)."""
    if ranks is not None and ranks < 1:
        raise ValueError(f"ranks must be at least 1, got {ranks}")
    if ranks != 1 and parallel in (None, False):
        planned = engine_options.get("offload_experts") or engine_options.get("gpu_memory_gb")
        count = default_ranks(path, device, planned) if ranks is None else ranks  # type: ignore[arg-type]
        if count > 1:
            return load_driven(path, count, device, dtype, progress, quantized, **engine_options)
    return engine_load(path, device, dtype, progress, parallel, quantized, **engine_options)


def default_ranks(path: str | Path, device: str | None = None, offload: float | None = None) -> int:
    """The default of `--parallel`: every visible GPU (as many as split the routed experts evenly) when
    the checkpoint's files do not fit in FITS_ONE_GPU of GPU 0's free memory, else 1; always 1 on CPU,
    on a named GPU (`cuda:K`) and with expert offload asked for (`offload`: --offload-experts or
    --gpu-memory, the other answer to a model larger than a GPU)."""
    cuda = torch.cuda.is_available() if device is None else str(device) == "cuda"
    if not cuda or offload is not None or torch.cuda.device_count() < 2:
        return 1
    stored = sum(file.stat().st_size for file in Path(path).glob("*.safetensors"))
    if stored <= FITS_ONE_GPU * torch.cuda.mem_get_info(0)[0]:
        return 1
    experts = V4Config.from_json(path).n_routed_experts
    return max(n for n in range(1, torch.cuda.device_count() + 1) if experts % n == 0)


def load_driven(path: str | Path, ranks: int, device: str | None = None, dtype: str | torch.dtype | None = None,
                progress: LoadProgress | None = None, quantized: bool | None = None, timeout_s: float = TIMEOUT_S,
                **engine_options: object) -> DrivenEngine:
    """`model.load(path, ...)` over `ranks` processes of this host, this one rank 0 (GPU 0 on CUDA,
    rank r on GPU r); `progress` hears rank 0's shards. See the module docstring.

    Raises:
        ValueError: fewer than 2 ranks, more than the visible GPUs, a named GPU, or expert offload.
        ParallelError: a worker that could not start or load (with its reason).
    """
    device = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.startswith("cuda")
    if ranks < 2:
        raise ValueError(f"a driven engine needs at least 2 ranks, got {ranks}")
    if device not in ("cuda", "cpu"):
        raise ValueError(f"--parallel puts rank r on GPU r: name the device cuda (or cpu), not {device}")
    if cuda and ranks > torch.cuda.device_count():
        raise ValueError(f"--parallel {ranks} needs {ranks} GPUs; {torch.cuda.device_count()} are visible")
    if engine_options.get("offload_experts") is not None or engine_options.get("gpu_memory_gb") is not None:
        raise ValueError("expert offload runs in one process: --offload-experts or --gpu-memory and --parallel "
                         "do not combine")
    if cuda:
        for key, value in NO_MULTICAST.items():
            os.environ.setdefault(key, value)  # inherited by the workers; read when NCCL starts
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if quantized is None:  # decided once, here, so every rank holds the weights alike
        quantized = default_quantized(V4Config.from_json(path), device)
    store = dist.TCPStore("127.0.0.1", 0, ranks, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=RENDEZVOUS_S))
    options = {"device": device, "dtype": dtype, "quantized": quantized, **engine_options}
    context = mp.get_context("spawn")
    processes, commands, reports = [], [], []
    for rank in range(1, ranks):
        command_out, command_in = context.Pipe(duplex=False)
        report_out, report_in = context.Pipe(duplex=False)
        process = context.Process(target=follow, name=f"v4-rank{rank}", daemon=True,
                                  args=(rank, ranks, store.port, cuda, str(path), options, timeout_s,
                                        command_out, report_in, os.getpid()))
        process.start()
        command_out.close()  # the worker's ends: once it exits, the driver's reads see EOF
        report_in.close()
        processes.append(process)
        commands.append(command_in)
        reports.append(report_out)
    driver = Driver(ranks, "GPU" if cuda else "CPU", processes, commands, reports, store)
    try:
        driver.wait_for("hello", RENDEZVOUS_S)
        driver.group = make_group(store, 0, ranks, cuda, timeout_s)
        engine = engine_load(path, device, dtype, progress, Parallel(0, ranks, 0, driver.group), quantized,
                             **engine_options)
        driver.wait_for("ready", None)
    except BaseException:
        driver.close()
        raise
    driver.watch()
    return DrivenEngine(engine, driver)


class Driver:
    """The driving end of the ranks: the workers' processes and pipes, the process group, the counters
    each state had after its last replayed call, and the failure that stopped the engine, if any."""

    def __init__(self, world: int, kind: str, processes: list, commands: list[Connection],
                 reports: list[Connection], store: object) -> None:
        self.world, self.kind = world, kind
        self.processes, self.commands, self.reports = processes, commands, reports
        self.store = store  # the rendezvous the group was made on: kept for the group's life
        self.group: object | None = None
        self.failure: ParallelError | None = None
        self._lock = threading.RLock()  # one call at a time goes out, and runs, in the order it was sent
        self._depth = 0  # > 0 inside a call: nested engine calls are replayed by the outer one
        self._recorded: dict[str, Counters] = {}
        self._dropped: collections.deque[str] = collections.deque()  # states collected, to free on workers
        self._closing = threading.Event()
        self._failed = threading.Event()
        self._fail_lock = threading.Lock()
        self._callbacks: list[Callable[[ParallelError], None]] = []

    # -- start and watch
    def wait_for(self, kind: str, timeout_s: float | None) -> None:
        """Block until every worker has reported `kind` ("hello", "ready"); ParallelError for a
        worker that failed or exited first, or did not report in `timeout_s`."""
        pending = {conn: rank for rank, conn in enumerate(self.reports, 1)}
        while pending:
            sentinels = {self.processes[rank - 1].sentinel: rank for rank in pending.values()}
            ready = wait([*pending, *sentinels], timeout_s)
            if not ready:
                raise ParallelError(f"rank {min(pending.values())} of {self.world} did not start within "
                                    f"{timeout_s:.0f} s")
            for conn in [c for c in ready if c in pending]:
                rank = pending[conn]
                message = self._receive(conn)
                if message is not None and message[0] == kind:
                    del pending[conn]
                elif message is not None and message[0] == "error":
                    raise ParallelError(self._describe(rank, "failed: " + _last_line(message[1])))
            for sentinel in [s for s in ready if s in sentinels]:
                rank = sentinels[sentinel]
                if rank in pending.values():
                    raise ParallelError(self._describe(rank, self._exit_reason(rank)))

    def watch(self) -> None:
        """Start the thread that stops the engine when a worker dies or reports a failure."""
        threading.Thread(target=self._watch, name="v4-parallel-watch", daemon=True).start()

    def on_failure(self, callback: Callable[[ParallelError], None]) -> None:
        """Have `callback` hear the failure that stops the engine (from the watching thread)."""
        self._callbacks.append(callback)

    def _watch(self) -> None:
        objects: dict[object, int] = {conn: rank for rank, conn in enumerate(self.reports, 1)}
        objects |= {process.sentinel: rank for rank, process in enumerate(self.processes, 1)}
        while objects and not self._closing.is_set():
            for ready in wait(list(objects)):
                rank = objects[ready]
                if isinstance(ready, Connection):
                    message = self._receive(ready)
                    if message is None:
                        del objects[ready]
                    elif message[0] == "error":
                        self._fail(self._describe(rank, "failed: " + _last_line(message[1])))
                else:
                    del objects[ready]
                    if not self._closing.is_set():
                        self._fail(self._describe(rank, self._exit_reason(rank)))

    def _receive(self, conn: Connection) -> tuple | None:
        try:
            return conn.recv()
        except (EOFError, OSError):
            return None

    def _exit_reason(self, rank: int) -> str:
        """Why worker `rank` exited: the failure it reported, else its exit code or signal."""
        conn = self.reports[rank - 1]
        while not conn.closed and conn.poll(0.2):
            message = self._receive(conn)
            if message is None:
                break
            if message[0] == "error":
                return "failed: " + _last_line(message[1])
        process = self.processes[rank - 1]
        process.join(1.0)
        code = process.exitcode
        if code is not None and code < 0:
            return f"was killed by {signal.Signals(-code).name}"
        return f"exited (code {code})"

    def _describe(self, rank: int, what: str) -> str:
        where = f"GPU {rank}" if self.kind == "GPU" else "CPU"
        who = "the driver (rank 0" if rank == 0 else f"the worker process of rank {rank}"
        who += f", {where})" if rank == 0 else f" of {self.world} ({where})"
        return f"{who} {what}; the engine on {self.world} ranks has stopped"

    def _fail(self, message: str) -> None:
        """Stop the engine: the first failure is kept; collectives are aborted, workers ended, the
        callbacks told, and only then is the failure signalled to calls waiting for it, so a caller that
        sees the error can count on its callbacks having heard it."""
        with self._fail_lock:
            if self.failure is not None:
                return
            self.failure = ParallelError(message)
        abort = getattr(self.group, "abort", None)
        if abort is not None:
            try:
                abort()  # a call blocked in a collective raises instead of waiting for the timeout
            except Exception:  # noqa: BLE001 - best effort: the workers are ended below anyway
                pass
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        try:
            for callback in self._callbacks:
                callback(self.failure)
        finally:
            self._failed.set()

    # -- calls
    def adopt(self, state: DecodeState, message: NewState) -> None:
        """A state the driver made: the workers make theirs; dropped with the driver's."""
        with self._lock:
            if self._depth:
                return  # made inside a call: the workers make theirs as they replay it
            self._raise_failure()
            self._send([*self._frees(), message])
            self._recorded[state.id] = counters(state)
            weakref.finalize(state, self._dropped.append, state.id)

    def call(self, target: str, method: str, args: tuple, kwargs: dict, local: Callable[[], object]) -> object:
        """Run `local()` (the driver's `target.method(*args, **kwargs)`) with every worker replaying it;
        the states among the arguments are synced first where the driver changed them on its own."""
        with self._lock:
            if self._depth:
                return local()
            self._raise_failure()
            states = states_in(args) + states_in(kwargs)
            messages, syncs = self._frees(), []
            for state in states:
                now, before = counters(state), self._recorded.get(state.id)
                if before is None:
                    raise EngineInputError("this state was made by another engine (other weights): make one "
                                           "with new_state()")
                if now != before:
                    messages.append(Sync(state.id, now))
                    syncs.append(changed_parts(state, before, now))
            messages.append(Call(target, method, encode(args), encode(kwargs)))
            self._depth += 1
            try:
                self._send(messages)
                for parts in syncs:
                    share_parts(parts, self.group, 0)
                result = local()
            except ValueError:
                raise  # a caller's error, raised before any collective on every rank alike
            except KeyboardInterrupt:
                self._fail(self._describe(0, "was interrupted in the middle of a step"))
                raise
            except Exception as exc:
                self._failed.wait(FAILURE_GRACE_S)  # a worker that died is the usual cause: name it
                if self.failure is None:
                    self._fail(self._describe(0, f"failed: {type(exc).__name__}: {exc}"))
                raise ParallelError(str(self.failure)) from exc
            finally:
                self._depth -= 1
            for state in states:
                self._recorded[state.id] = counters(state)
            return result

    def _frees(self) -> list[Free]:
        keys = []
        while self._dropped:
            key = self._dropped.popleft()
            self._recorded.pop(key, None)
            keys.append(key)
        return [Free(tuple(keys))] if keys else []

    def _send(self, messages: Sequence[object]) -> None:
        for rank, conn in enumerate(self.commands, 1):
            try:
                conn.send(list(messages))
            except OSError as exc:
                self._failed.wait(FAILURE_GRACE_S)
                if self.failure is None:
                    self._fail(self._describe(rank, f"stopped reading ({exc})"))
                raise ParallelError(str(self.failure)) from exc

    def _raise_failure(self) -> None:
        if self.failure is not None:
            raise ParallelError(str(self.failure))

    # -- stop
    def close(self) -> None:
        """Stop the workers (told to, then terminated after STOP_S) and release the group; idempotent."""
        if self._closing.is_set():
            return
        self._closing.set()
        if self.failure is None and self._lock.acquire(timeout=STOP_S):
            try:
                for conn in self.commands:
                    try:
                        conn.send([Stop()])
                    except OSError:
                        pass
            finally:
                self._lock.release()
        for process in self.processes:
            process.join(STOP_S)
            if process.is_alive():
                process.terminate()
                process.join(STOP_S)
        for conn in (*self.commands, *self.reports):
            conn.close()
        self.group = None


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no reason given"


class _Replicated:
    """A static or draft decoder of a driven engine: the methods that change it (DECODER_CALLS) run on
    every rank; everything else (batch, lengths, capacity) reads the driver's copy."""

    def __init__(self, driver: Driver, target: object) -> None:
        self._driver, self._target, self._key = driver, target, decoder_key(target)

    def __getattr__(self, name: str) -> object:
        value = getattr(self._target, name)
        if name not in DECODER_CALLS:
            return value

        def replicated(*args: object, **kwargs: object) -> object:
            return self._driver.call(self._key, name, args, kwargs, lambda: value(*args, **kwargs))

        return replicated


class DrivenEngine(Engine):
    """An Engine whose model runs over `ranks` processes, this one driving (module docstring). Its
    calls are the Engine's; `close()` stops the workers (also run when it is collected, and at exit)."""

    def __init__(self, engine: Engine, driver: Driver) -> None:
        super().__init__(engine.model, engine.config, engine.tokenizer, engine.checkpoint)
        self.driver = driver
        self._proxies: dict[str, _Replicated] = {}
        self._finalizer = weakref.finalize(self, driver.close)

    @property
    def ranks(self) -> int:
        """How many processes hold the model (this one included)."""
        return self.driver.world

    def close(self) -> None:
        self._finalizer()

    def new_state(self, max_tokens: int | None = None, draft: bool = True) -> DecodeState:
        state = super().new_state(max_tokens, draft)  # no collectives: made here first, then on the workers
        self.driver.adopt(state, NewState(state.id, max_tokens, draft))
        return state

    def forward(self, token_ids: Sequence[int] | torch.Tensor, state: DecodeState,
                last_only: bool = False) -> torch.Tensor:
        return self.driver.call(ENGINE, "forward", (token_ids, state), {"last_only": last_only},
                                lambda: Engine.forward(self, token_ids, state, last_only))

    def prefill(self, token_ids: Sequence[int] | torch.Tensor, state: DecodeState,
                chunk_tokens: int | None = None) -> torch.Tensor:
        return self.driver.call(ENGINE, "prefill", (token_ids, state), {"chunk_tokens": chunk_tokens},
                                lambda: Engine.prefill(self, token_ids, state, chunk_tokens))

    def draft(self, state: DecodeState, next_token: int) -> torch.Tensor:
        return self.driver.call(ENGINE, "draft", (state, next_token), {},
                                lambda: Engine.draft(self, state, next_token))

    def static_decoder(self, batch: int, capacity: int) -> _Replicated:  # type: ignore[override]
        return self._proxy(self.driver.call(ENGINE, "static_decoder", (batch, capacity), {},
                                            lambda: Engine.static_decoder(self, batch, capacity)))

    def state_decoder(self, state: DecodeState, capacity: int, draft: bool = False) -> _Replicated:  # type: ignore[override]
        return self._proxy(self.driver.call(ENGINE, "state_decoder", (state, capacity), {"draft": draft},
                                            lambda: Engine.state_decoder(self, state, capacity, draft)))

    def draft_decoder(self, batch: int, capacity: int) -> _Replicated:  # type: ignore[override]
        return self._proxy(self.driver.call(ENGINE, "draft_decoder", (batch, capacity), {},
                                            lambda: Engine.draft_decoder(self, batch, capacity)))

    def _proxy(self, decoder: object) -> _Replicated:
        """The one proxy of each decoder, so callers comparing decoders (`is`) see the engine's cache."""
        key = decoder_key(decoder)
        proxy = self._proxies.get(key)
        if proxy is None or proxy._target is not decoder:
            proxy = self._proxies[key] = _Replicated(self.driver, decoder)
        return proxy
