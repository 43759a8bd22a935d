"""A worker of a driven engine (parallel_driver.py): a process the driver spawned that loads its shard of
the model and replays the driver's engine calls on it, one message at a time, until the driver stops it
or goes away.

It says nothing to the user: its stdout and stderr go to /dev/null, and what it has to report (hello,
loaded, or the traceback that ended it) goes to the driver over its report pipe. It exits when told to
(`Stop`), when the driver's end of the command pipe closes, when its parent process is gone (a driver
killed outright), and after any failure other than a caller's error (a ValueError such as
EngineInputError, which every rank raises alike before any collective, so the driver has it too).
"""

from __future__ import annotations

import datetime
import os
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path

import torch

from .engine import load
from .parallel import NO_MULTICAST, Parallel
from .parallel_protocol import (DECODER_CALLS, DECODER_MAKERS, ENGINE, ENGINE_CALLS, Call, Free, NewState, StateRef, Stop, Sync,
                                apply_counters, changed_parts, counters, decoder_key, make_group, share_parts)
from .state import DecodeState

PARENT_POLL_S = 1.0  # how often a worker checks that the driver's process still exists


def follow(rank: int, world: int, port: int, cuda: bool, path: str, load_options: dict, timeout_s: float,
           commands: Connection, reports: Connection, parent: int) -> None:
    """The worker process's entry point (torch.multiprocessing spawns it with these arguments)."""
    _quiet()
    threading.Thread(target=_watch_parent, args=(parent,), name="v4-parent-watch", daemon=True).start()
    try:
        reports.send(("hello", rank))
        import torch.distributed as dist

        if cuda:
            for key, value in NO_MULTICAST.items():
                os.environ.setdefault(key, value)  # read by NCCL when the group's communicator starts
            torch.cuda.set_device(rank)
        store = dist.TCPStore("127.0.0.1", port, world, is_master=False,
                              timeout=datetime.timedelta(seconds=timeout_s))
        group = make_group(store, rank, world, cuda, timeout_s)
        engine = load(Path(path), parallel=Parallel(rank, world, rank, group), **load_options)
        reports.send(("ready", rank))
        Follower(engine, group, rank).run(commands)
    except BaseException:  # noqa: BLE001 - whatever ended it, the driver reports it
        try:
            reports.send(("error", traceback.format_exc()))
        except OSError:
            pass
        sys.exit(1)


class Follower:
    """The replay loop: the worker's engine, the states and decoders the driver named, by key."""

    def __init__(self, engine: object, group: object, rank: int) -> None:
        self.engine, self.group, self.rank = engine, group, rank
        self.objects: dict[str, object] = {ENGINE: engine}

    def run(self, commands: Connection) -> None:
        """Replay message batches until `Stop` or the driver's end closes."""
        with torch.no_grad():
            while True:
                try:
                    batch = commands.recv()
                except (EOFError, OSError):
                    return  # the driver is gone
                for message in batch:
                    if isinstance(message, Stop):
                        return
                    self.handle(message)

    def handle(self, message: object) -> None:
        """One message (parallel_protocol's vocabulary)."""
        if isinstance(message, NewState):
            self.objects[message.key] = self.engine.new_state(message.max_tokens, message.draft)  # type: ignore[attr-defined]
        elif isinstance(message, Free):
            for key in message.keys:
                self.objects.pop(key, None)
        elif isinstance(message, Sync):
            state = self.objects[message.key]
            assert isinstance(state, DecodeState)
            old = counters(state)
            apply_counters(state, message.counters)
            share_parts(changed_parts(state, old, message.counters), self.group, self.rank)
        elif isinstance(message, Call):
            self._call(message)
        else:
            raise TypeError(f"unknown message {message!r}")

    def _call(self, call: Call) -> None:
        allowed = ENGINE_CALLS if call.target == ENGINE else DECODER_CALLS
        if call.method not in allowed:
            raise ValueError(f"{call.target}.{call.method} is not a call workers replay")
        target = self.objects[call.target]
        args = tuple(self._resolve(a) for a in call.args)
        kwargs = {k: self._resolve(v) for k, v in call.kwargs.items()}
        try:
            result = getattr(target, call.method)(*args, **kwargs)
        except ValueError:
            return  # a caller's error, raised on every rank before any collective: the driver has it too
        if call.method in DECODER_MAKERS:
            self.objects[decoder_key(result)] = result

    def _resolve(self, value: object) -> object:
        if isinstance(value, StateRef):
            return self.objects[value.key]
        if isinstance(value, torch.Tensor):
            return value.to(self.engine.device)  # type: ignore[attr-defined]
        return value


def _quiet() -> None:
    """Only the driver prints: the worker's stdout and stderr go to /dev/null."""
    null = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)


def _watch_parent(parent: int) -> None:
    """Exit when the driver's process is gone (killed outright: its pipes may not close first, and a
    worker blocked in an NCCL collective would otherwise wait for its timeout)."""
    while True:
        time.sleep(PARENT_POLL_S)
        if os.getppid() != parent:
            os._exit(1)
