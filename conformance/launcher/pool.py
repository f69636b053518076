"""A pool of `world_size` live rank processes that share one default process group.

The launcher process hosts the rendezvous TCPStore (as torchrun's agent does), spawns one worker per rank,
and then hands each call to every worker and collects the replies. Any incomplete call kills the whole
pool: a rank that raised or hung leaves the group in an unknown state.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from datetime import timedelta
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from conformance.launcher.environment import MASTER_ADDR, rank_env
from conformance.launcher.errors import error_for
from conformance.launcher.messages import SHUTDOWN, decode_reply
from conformance.launcher.outcome import RankOutcome, failure_from_exception
from conformance.launcher.source_map import SourceMap
from conformance.launcher.worker import STACK_DUMP_SIGNAL, WorkerSpec, worker_main

FAILURE_GRACE_S = 1.0
"""After one rank fails, how long the others get to report before the pool is killed."""

STACK_DUMP_WAIT_S = 1.0
"""How long to wait for stuck ranks to write their stacks before killing them."""

SHUTDOWN_GRACE_S = 3.0
"""How long a polite shutdown waits for workers to exit before killing them."""

_STORE_TIMEOUT = timedelta(minutes=30)


class RankPool:
    """`world_size` spawned workers, started by `start`, used by `run`, ended by `close` or `kill`."""

    def __init__(self, world_size: int, device: str, env: dict[str, str], init_payload: bytes | None) -> None:
        self.world_size = world_size
        self.device = device
        self.env = env
        self.init_payload = init_payload
        self.closed = False
        self.shutdown_requested_at: float | None = None
        self._procs: list[multiprocessing.process.BaseProcess] = []
        self._conns: list[Connection] = []
        self._store: Any = None
        self._dump_dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def pids(self) -> list[int]:
        """Worker process ids in rank order (empty once closed)."""
        return [] if self.closed else [p.pid for p in self._procs if p.pid is not None]

    def dead_workers(self) -> dict[int, int | None]:
        """Ranks whose process has exited, with exit codes; empty for a healthy pool."""
        return {rank: p.exitcode for rank, p in enumerate(self._procs) if not p.is_alive()}

    def start(self, timeout: float, init_source: SourceMap | None = None) -> None:
        """Spawn the workers and wait until every rank has joined the process group and run worker_init.

        Raises a `RankCallFailed` subclass (after killing the pool) if any rank fails or is late.
        """
        from torch.distributed import TCPStore  # the launcher needs torch.distributed only from here on

        try:
            self._store = TCPStore(
                MASTER_ADDR,
                0,
                self.world_size,
                is_master=True,
                timeout=_STORE_TIMEOUT,
                wait_for_workers=False,
            )
            self._dump_dir = tempfile.TemporaryDirectory(prefix="rank-pool-")
            run_id = uuid.uuid4().hex
            context = multiprocessing.get_context("spawn")
            main_thread = threading.current_thread() is threading.main_thread()
            for rank in range(self.world_size):
                spec = WorkerSpec(
                    rank=rank,
                    world_size=self.world_size,
                    device=self.device,
                    env=rank_env(
                        rank, self.world_size, master_port=self._store.port, run_id=run_id, extra=self.env
                    ),
                    init_payload=self.init_payload,
                    stack_dump_path=str(self._stack_dump_path(rank)),
                    parent_pid=os.getpid(),
                    die_with_parent=main_thread,
                )
                ours, theirs = context.Pipe(duplex=True)
                proc = context.Process(
                    target=worker_main, args=(spec, theirs), name=f"rank-{rank}-of-{self.world_size}"
                )
                proc.start()
                theirs.close()
                self._procs.append(proc)
                self._conns.append(ours)
        except BaseException:
            self.kill()
            raise
        label = "worker startup (import torch, init_process_group, worker_init)"
        outcome = RankOutcome(world_size=self.world_size, label=label, timeout=timeout, phase="startup")
        try:
            self._collect(outcome, list(range(self.world_size)), time.monotonic() + timeout)
        except BaseException:  # Ctrl-C while waiting: nobody else knows this pool yet
            self.kill()
            raise
        if not outcome.complete:
            self._fail(outcome, init_source or SourceMap())

    def run(self, payload: bytes, *, timeout: float, label: str, source: SourceMap) -> RankOutcome:
        """Send one encoded `Call` to every rank; return the complete outcome or raise and kill the pool.

        `source` (from `encode_call`) maps by-value functions in remote tracebacks back to their files.
        """
        deadline = time.monotonic() + timeout
        outcome = RankOutcome(world_size=self.world_size, label=label, timeout=timeout)
        sent = []
        for rank, conn in enumerate(self._conns):
            try:
                conn.send_bytes(payload)
            except OSError:
                outcome.exit_codes[rank] = self._exit_code(rank)
            else:
                sent.append(rank)
        self._collect(outcome, sent, deadline)
        if not outcome.complete:
            self._fail(outcome, source)
        return outcome

    def close(self) -> None:
        """Ask every worker to leave the process group and exit; kill whatever is left after a grace period."""
        self.request_shutdown()
        self.finish_shutdown(time.monotonic() + SHUTDOWN_GRACE_S)

    def request_shutdown(self) -> None:
        """First half of `close`, so that several pools can wind down at the same time."""
        if self.closed or self.shutdown_requested_at is not None:
            return
        self.shutdown_requested_at = time.monotonic()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send_bytes(SHUTDOWN)

    def finish_shutdown(self, deadline: float) -> None:
        """Second half of `close`: wait for the workers until `deadline` (monotonic), then kill the rest."""
        if self.closed:
            return
        for proc in self._procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        self.kill()

    def kill(self) -> None:
        """SIGKILL every worker and its process group, reap them, and release the store and pipes."""
        if self.closed:
            return
        self.closed = True
        for proc in self._procs:
            if proc.pid is not None:
                _kill_tree(proc.pid)
        for proc in self._procs:
            if proc.pid is not None:
                proc.join(5.0)
        for conn in self._conns:
            conn.close()
        self._store = None
        if self._dump_dir is not None:
            self._dump_dir.cleanup()

    def _collect(self, outcome: RankOutcome, ranks: list[int], deadline: float) -> None:
        pending = set(ranks)
        stop_at = deadline
        while pending:
            remaining = stop_at - time.monotonic()
            if remaining <= 0:
                break
            watched: dict[Any, int] = {}
            for rank in pending:
                watched[self._conns[rank]] = rank
                watched[self._procs[rank].sentinel] = rank
            for ready in wait(list(watched), timeout=remaining):
                rank = watched[ready]
                if rank not in pending:
                    continue
                pending.discard(rank)
                self._receive(rank, outcome)
                if rank not in outcome.values:
                    stop_at = min(stop_at, time.monotonic() + FAILURE_GRACE_S)
        outcome.unfinished = tuple(sorted(pending))
        outcome.timed_out = bool(pending) and stop_at >= deadline

    def _receive(self, rank: int, outcome: RankOutcome) -> None:
        conn = self._conns[rank]
        try:
            data = conn.recv_bytes() if conn.poll() else None
        except (EOFError, OSError):
            data = None
        if data is None:  # the process ended without a reply
            outcome.exit_codes[rank] = self._exit_code(rank)
            return
        try:
            reply = decode_reply(data)
        except BaseException as exc:
            note = f"(raised in the launcher while unpickling rank {rank}'s reply)"
            outcome.failures[rank] = failure_from_exception(rank, exc, note=note)
            return
        if reply.failure is not None:
            outcome.failures[rank] = reply.failure
        else:
            outcome.values[rank] = reply.value
        if not reply.group_alive:
            outcome.group_lost.add(rank)

    def _exit_code(self, rank: int) -> int | None:
        proc = self._procs[rank]
        proc.join(1.0)
        return proc.exitcode

    def _fail(self, outcome: RankOutcome, source: SourceMap) -> None:
        stacks = self._dump_stacks(outcome.unfinished)
        self.kill()
        outcome.stacks = {rank: source.restore(text) for rank, text in stacks.items()}
        outcome.failures = {
            rank: replace(failure, traceback=source.restore(failure.traceback))
            for rank, failure in outcome.failures.items()
        }
        raise error_for(outcome)

    def _dump_stacks(self, ranks: tuple[int, ...]) -> dict[int, str]:
        signalled = []
        for rank in ranks:
            proc = self._procs[rank]
            if proc.pid is not None and proc.is_alive():
                try:
                    os.kill(proc.pid, STACK_DUMP_SIGNAL)
                    signalled.append(rank)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + STACK_DUMP_WAIT_S
        while signalled and time.monotonic() < deadline:
            if all(self._stack_dump_path(rank).stat().st_size > 0 for rank in signalled):
                time.sleep(0.05)  # let the last lines land
                break
            time.sleep(0.02)
        stacks = {}
        for rank in signalled:
            text = _without_launcher_frames(self._stack_dump_path(rank).read_text(errors="replace"))
            if text:
                stacks[rank] = text
        return stacks

    def _stack_dump_path(self, rank: int) -> Path:
        assert self._dump_dir is not None
        return Path(self._dump_dir.name) / f"rank{rank}.stack"


def _without_launcher_frames(stack: str) -> str:
    """Drop the worker loop and multiprocessing bootstrap frames under the user's code in a stack dump."""
    launcher_files = (
        worker_main.__code__.co_filename,
        str(Path(multiprocessing.__file__).parent),
        '"<string>"',
    )
    return "".join(
        row
        for row in stack.splitlines(keepends=True)
        if not (row.lstrip().startswith("File ") and any(name in row for name in launcher_files))
    )


def _kill_tree(pid: int) -> None:
    # Workers lead their own process group (see worker._detach), so this also reaches their children.
    for kill in (os.killpg, os.kill):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(pid, signal.SIGKILL)
