"""The rank process: join the default process group once, then serve calls until told to stop.

Runs in a spawned interpreter. Nothing here imports torch at module level: the rank environment
(OMP_NUM_THREADS included) must be in place before torch initialises.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import sys
from dataclasses import dataclass
from multiprocessing.connection import Connection

from conformance.launcher.messages import SHUTDOWN, Reply, decode_call, encode_reply
from conformance.launcher.outcome import failure_from_exception

STACK_DUMP_SIGNAL = signal.SIGUSR1
"""The launcher sends this to a stuck rank to get its Python stack (faulthandler writes it to a file)."""

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a rank process needs; pickled by multiprocessing's spawn."""

    rank: int
    world_size: int
    device: str
    env: dict[str, str]
    init_payload: bytes | None
    """cloudpickled `worker_init`, run once after the process group is up."""
    stack_dump_path: str
    parent_pid: int
    die_with_parent: bool
    """Ask Linux to kill this process when the launcher thread that spawned it dies."""


def worker_main(spec: WorkerSpec, conn: Connection) -> None:
    """Entry point of a rank process (the `multiprocessing.Process` target)."""
    _detach(spec)
    os.environ.update(spec.env)
    for stream in (sys.stdout, sys.stderr):  # a rank killed later must not take its last prints with it
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(line_buffering=True)
    with open(spec.stack_dump_path, "w") as stack_dump:
        faulthandler.register(STACK_DUMP_SIGNAL, file=stack_dump, all_threads=True)
        ready = _start(spec)
        conn.send_bytes(encode_reply(ready))
        if ready.failure is not None:
            return
        while True:
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError):  # the launcher went away
                break
            if data == SHUTDOWN:
                break
            conn.send_bytes(_encode(spec.rank, _serve(spec.rank, data)))
    _leave_group()


def _detach(spec: WorkerSpec) -> None:
    # Own process group: the launcher can kill this rank together with anything it spawned, and a Ctrl-C
    # in the terminal reaches only the launcher, which then tears the pool down itself.
    os.setpgrp()
    if spec.die_with_parent and sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != spec.parent_pid:  # the launcher died before prctl took effect
        os._exit(1)


def _start(spec: WorkerSpec) -> Reply:
    try:
        import cloudpickle
        import torch
        import torch.distributed as dist

        threads = spec.env.get("OMP_NUM_THREADS", "")
        if threads.isdigit() and int(threads) > 0:
            torch.set_num_threads(int(threads))  # in case torch was imported before the env was set
        if spec.device == "cuda":
            torch.cuda.set_device(spec.rank)
            backend = "nccl"
        else:
            backend = "gloo"
        dist.init_process_group(backend=backend, init_method="env://")
        if spec.init_payload is not None:
            cloudpickle.loads(spec.init_payload)()
    except BaseException as exc:
        return Reply(failure=failure_from_exception(spec.rank, exc, skip_frames_of=__file__))
    return Reply()


def _serve(rank: int, data: bytes) -> Reply:
    try:
        call = decode_call(data)
    except BaseException as exc:
        note = (
            "The worker could not unpickle the call. Functions are shipped by reference when their module "
            "is importable, so that module must import in a fresh interpreter with the launcher's sys.path; "
            "define the function inside the caller (closures ship by value) or call "
            "cloudpickle.register_pickle_by_value(module)."
        )
        return Reply(failure=failure_from_exception(rank, exc, note=note, skip_frames_of=__file__))
    try:
        if call.before is not None:
            call.before()
        try:
            value = call.fn(*call.args, **call.kwargs)
        finally:
            if call.after is not None:
                call.after()
    except BaseException as exc:  # SystemExit too: a rank must always answer
        return Reply(
            failure=failure_from_exception(rank, exc, skip_frames_of=__file__), group_alive=_group_alive()
        )
    return Reply(value=value, group_alive=_group_alive())


def _encode(rank: int, reply: Reply) -> bytes:
    try:
        return encode_reply(reply)
    except BaseException as exc:
        note = "The return value of the function must be picklable (tensors are fine)."
        return encode_reply(
            Reply(
                failure=failure_from_exception(rank, exc, note=note, skip_frames_of=__file__),
                group_alive=reply.group_alive,
            )
        )


def _group_alive() -> bool:
    import torch.distributed as dist

    return dist.is_initialized()


def _leave_group() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
