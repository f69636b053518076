"""The rank launcher against real rank processes: environment, collectives, failures, cleanup and reuse.

Starting a pool (spawn, import torch, rendezvous) is the slow part, so the tests share pools where they
can: the failure tests, which kill theirs, come last, and each one's fresh pool serves the next.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from conformance.launcher import (
    RankCrashed,
    RankError,
    RankTimeout,
    pool_pids,
    run_on_ranks,
    shutdown_pools,
)
from conformance.launcher.pytest_plugin import run_ranks  # noqa: F401  (the fixture, for this module)

try:
    import psutil
except ImportError:  # pragma: no cover - psutil is optional
    psutil = None

TORCHRUN_VARS = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "OMP_NUM_THREADS",
)


def _alive(pid: int) -> bool:
    """True while `pid` runs; a zombie waiting to be reaped counts as gone."""
    if psutil is not None:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
    stat = Path(f"/proc/{pid}/stat")
    if Path("/proc/self/stat").exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _assert_gone(pids: list[int], within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while any(map(_alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in pids if _alive(pid)] == []


def _assert_reapable(pid: int, within: float = 5.0) -> None:
    """Wait until waitpid() can collect `pid`, as the pool's liveness check does.

    A killed multi-threaded process shows as a zombie while its other threads still exit, and
    waitpid() collects it only after they have; checking /proc alone races the pool's view.
    """
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if pid not in {child.pid for child in multiprocessing.active_children()}:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} was killed but never became reapable")


# Functions the ranks run. Module-level ones travel by reference (the workers import this module).


def _who_am_i() -> dict:
    return {
        "rank": dist.get_rank(),
        "world_size": dist.get_world_size(),
        "backend": dist.get_backend(),
        "env": {name: os.environ.get(name) for name in TORCHRUN_VARS},
        "pid": os.getpid(),
    }


def _sum_and_gather(scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    rank = dist.get_rank()
    total = torch.tensor([float(rank)])
    dist.all_reduce(total)
    gathered = [torch.zeros(1) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, torch.tensor([scale * rank + 1.0]))
    return total, torch.cat(gathered)


def _read_env(*names: str) -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in names}


def _tensors_with_grad_and_a_slice() -> dict[str, torch.Tensor]:
    weight = torch.ones(3, requires_grad=True)
    return {"leaf": weight, "product": weight * (dist.get_rank() + 1), "slice": torch.arange(1e6)[:4]}


def _hang_on_rank_1(child_pid_file: str) -> int:
    if dist.get_rank() == 1:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"])
        Path(child_pid_file).write_text(str(child.pid))
        time.sleep(1000)
    return dist.get_rank()


def _exit_on_rank_1_segfault_on_rank_2() -> int:
    if dist.get_rank() == 1:
        os._exit(3)
    if dist.get_rank() == 2:
        os.kill(os.getpid(), signal.SIGSEGV)
    return dist.get_rank()


def _destroy_group() -> int:
    pid = os.getpid()
    dist.destroy_process_group()
    return pid


def _on_cuda() -> dict:
    x = torch.arange(4.0, device="cuda")
    dist.all_reduce(x)
    return {"backend": dist.get_backend(), "device": torch.cuda.current_device(), "sum": x}


# Environment and collectives.


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_each_rank_sees_torchrun_environment(world_size: int) -> None:
    results = run_on_ranks(_who_am_i, world_size)

    assert [(r["rank"], r["world_size"], r["backend"]) for r in results] == [
        (rank, world_size, "gloo") for rank in range(world_size)
    ]
    for rank, result in enumerate(results):
        env = result["env"]
        assert (env["RANK"], env["LOCAL_RANK"]) == (str(rank), str(rank))
        assert (env["WORLD_SIZE"], env["LOCAL_WORLD_SIZE"]) == (str(world_size), str(world_size))
        assert (env["GROUP_RANK"], env["MASTER_ADDR"], env["OMP_NUM_THREADS"]) == ("0", "127.0.0.1", "1")
    assert len({r["env"]["MASTER_PORT"] for r in results}) == 1
    assert int(results[0]["env"]["MASTER_PORT"]) > 0
    assert len({r["env"]["TORCHELASTIC_RUN_ID"] for r in results}) == 1
    assert results[0]["env"]["TORCHELASTIC_RUN_ID"]
    pids = [r["pid"] for r in results]
    assert len(set(pids)) == world_size
    assert os.getpid() not in pids


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_all_reduce_sums_ranks_and_all_gather_keeps_rank_order(world_size: int) -> None:
    results = run_on_ranks(_sum_and_gather, world_size, 10.0)

    expected_gather = torch.tensor([10.0 * rank + 1.0 for rank in range(world_size)])
    assert len(results) == world_size
    for total, gathered in results:
        assert total.item() == world_size * (world_size - 1) // 2
        assert torch.equal(gathered, expected_gather)


# What travels to and from the ranks.


def test_closures_and_lambdas_carry_their_captured_state() -> None:
    offset = 7
    factors = {"scale": 3}

    def shifted(x: int, *, extra: int) -> int:
        return dist.get_rank() * factors["scale"] + offset + x + extra

    assert run_on_ranks(shifted, 2, 100, extra=1000) == [1107, 1110]
    assert run_on_ranks(lambda: offset * (dist.get_rank() + 1), 2) == [7, 14]


def test_returned_tensors_come_back_detached_and_compact() -> None:
    results = run_on_ranks(_tensors_with_grad_and_a_slice, 2)

    for rank, result in enumerate(results):
        for tensor in result.values():
            assert tensor.device.type == "cpu"
            assert not tensor.requires_grad
        assert torch.equal(result["product"], torch.full((3,), rank + 1.0))
        assert torch.equal(result["slice"], torch.arange(4.0))
        assert result["slice"].untyped_storage().nbytes() == 4 * 4  # not the million-element storage


def test_consecutive_calls_reuse_the_same_workers() -> None:
    first = run_on_ranks(os.getpid, 2)
    second = run_on_ranks(os.getpid, 2)

    assert second == first
    assert set(first) <= set(pool_pids())


def test_before_and_after_hooks_run_around_the_call() -> None:
    def before() -> None:
        os.environ["LAUNCHER_TEST_MARKER"] = f"before-{dist.get_rank()}"

    def after() -> None:
        os.environ["LAUNCHER_TEST_MARKER"] = "after"

    assert run_on_ranks(_read_env, 2, "LAUNCHER_TEST_MARKER", before=before, after=after) == [
        {"LAUNCHER_TEST_MARKER": "before-0"},
        {"LAUNCHER_TEST_MARKER": "before-1"},
    ]
    assert run_on_ranks(_read_env, 2, "LAUNCHER_TEST_MARKER") == [{"LAUNCHER_TEST_MARKER": "after"}] * 2


def test_worker_init_runs_once_per_pool_and_keys_the_pool() -> None:
    def count_init() -> None:
        os.environ["LAUNCHER_TEST_INITS"] = str(int(os.environ.get("LAUNCHER_TEST_INITS", "0")) + 1)

    for _ in range(2):
        assert run_on_ranks(_read_env, 1, "LAUNCHER_TEST_INITS", worker_init=count_init) == [
            {"LAUNCHER_TEST_INITS": "1"}
        ]
    assert run_on_ranks(_read_env, 1, "LAUNCHER_TEST_INITS") == [{"LAUNCHER_TEST_INITS": None}]


def test_env_adds_variables_and_may_override_the_thread_count() -> None:
    env = {"LAUNCHER_TEST_FLAG": "on", "OMP_NUM_THREADS": "2"}

    [seen] = run_on_ranks(lambda: (_read_env(*env), torch.get_num_threads()), 1, env=env)

    assert seen == (env, 2)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"world_size": 0}, ValueError, "world_size"),
        ({"world_size": 2, "device": "tpu"}, ValueError, "device"),
        ({"world_size": 2, "env": {"RANK": "5"}}, ValueError, "RANK"),
        ({"world_size": 2, "env": {"X": 1}}, TypeError, "str"),
        ({"world_size": 2, "timeout": 0}, ValueError, "timeout"),
    ],
)
def test_bad_arguments_are_refused_before_any_process_starts(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        run_on_ranks(os.getpid, **kwargs)


# The pytest fixture.


def test_run_ranks_fixture_runs_and_skips_without_enough_gpus(run_ranks) -> None:  # noqa: F811
    assert run_ranks(dist.get_rank, 2) == [0, 1]
    if torch.cuda.device_count() < 2:
        with pytest.raises(pytest.skip.Exception, match="GPU"):
            run_ranks(dist.get_rank, 2, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_ranks_use_nccl_and_return_cpu_tensors() -> None:
    [result] = run_on_ranks(_on_cuda, 1, device="cuda")

    assert (result["backend"], result["device"]) == ("nccl", 0)
    assert result["sum"].device.type == "cpu"
    assert torch.equal(result["sum"], torch.arange(4.0))


# Failures: each kills its pool; the next call starts a fresh one. Kept together, after the tests that
# share healthy pools, so the suite starts as few pools as it can.


def test_call_that_destroys_the_process_group_gets_a_fresh_pool_next_time() -> None:
    [first] = run_on_ranks(_destroy_group, 1)
    [second] = run_on_ranks(_who_am_i, 1)

    assert second["pid"] != first
    assert (second["rank"], second["world_size"]) == (0, 1)


def test_worker_that_died_while_idle_is_replaced_with_a_warning() -> None:
    env = {"NXD_TEST_POOL": "idle-death"}  # a pool of its own, whatever earlier tests left running
    pids = run_on_ranks(os.getpid, 2, env=env)
    os.kill(pids[1], signal.SIGKILL)
    _assert_gone([pids[1]])
    _assert_reapable(pids[1])

    with pytest.warns(RuntimeWarning, match="died while idle"):
        fresh = run_on_ranks(os.getpid, 2, env=env)

    assert set(fresh).isdisjoint(pids)
    _assert_gone(pids)


def test_unpicklable_return_value_is_a_rank_error() -> None:
    with pytest.raises(RankError, match="must be picklable"):
        run_on_ranks(threading.Lock, 1)


def test_rank_error_carries_the_remote_traceback_and_the_next_call_works() -> None:
    pids = run_on_ranks(os.getpid, 2)

    def boom() -> str:
        if dist.get_rank() == 1:
            raise ValueError("boom-3")
        return "ok"

    raise_line = boom.__code__.co_firstlineno + 2
    with pytest.raises(RankError) as caught:
        run_on_ranks(boom, 2)

    error = caught.value
    message = str(error)
    assert isinstance(error, RuntimeError)
    assert error.ranks == (1,)
    assert error.outcome.values == {0: "ok"}
    assert "rank 1 of 2 raised ValueError: boom-3" in message
    assert f'File "{boom.__code__.co_filename}", line {raise_line}, in boom' in message
    assert 'raise ValueError("boom-3")' in message
    assert pickle.loads(pickle.dumps(error)).ranks == (1,)
    _assert_gone(pids)

    fresh = run_on_ranks(os.getpid, 2)
    assert len(fresh) == 2
    assert set(fresh).isdisjoint(pids)


def test_hanging_rank_times_out_and_leaves_no_process_behind(tmp_path: Path) -> None:
    pids = run_on_ranks(os.getpid, 2)  # warm, so the wall time below is the call's
    child_pid_file = tmp_path / "child.pid"

    start = time.monotonic()
    with pytest.raises(RankTimeout) as caught:
        run_on_ranks(_hang_on_rank_1, 2, str(child_pid_file), timeout=3)
    elapsed = time.monotonic() - start

    assert 3 <= elapsed < 10
    assert caught.value.ranks == (1,)
    assert caught.value.outcome.values == {0: 0}
    assert "line" in caught.value.outcome.stacks[1]
    assert "in _hang_on_rank_1" in caught.value.outcome.stacks[1]
    assert "did not finish: 1 (timed out)" in str(caught.value)
    _assert_gone([*pids, int(child_pid_file.read_text())])
    assert set(pool_pids()).isdisjoint(pids)


def test_dying_ranks_are_reported_as_crashes_with_their_exit_status() -> None:
    pids = run_on_ranks(os.getpid, 3)

    start = time.monotonic()
    with pytest.raises(RankCrashed) as caught:
        run_on_ranks(_exit_on_rank_1_segfault_on_rank_2, 3, timeout=60)

    assert time.monotonic() - start < 10
    assert caught.value.ranks == (1, 2)
    assert caught.value.outcome.exit_codes == {1: 3, 2: -signal.SIGSEGV}
    assert caught.value.outcome.values == {0: 0}
    assert "died: 1 (exited with status 3)" in str(caught.value)
    assert "died: 2 (was killed by SIGSEGV)" in str(caught.value)
    _assert_gone(pids)


# Last, as it ends the pools the other tests share.


def test_shutdown_pools_ends_every_worker() -> None:
    run_on_ranks(os.getpid, 4)  # the 4-rank pool normally still stands; this makes sure one does
    pids = pool_pids()
    assert len(pids) >= 4

    shutdown_pools()

    assert pool_pids() == []
    _assert_gone(pids)
