"""Where the trainer runs: device, precision and (under torchrun) the DDP process group."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.distributed as dist

from long_ctx.common.cli import USER_ERRORS, Terminated, UsageError, run_cli

T = TypeVar("T")


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    distributed: bool = False
    amp_dtype: torch.dtype | None = None  # autocast dtype, None for plain fp32
    base_dtype: torch.dtype = torch.float32  # storage dtype of the frozen trunk
    precision: str = "fp32"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum floats over processes (float64 so token counts stay exact)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64,
                         device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return t.tolist()

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every process's `obj`, in rank order, on every process."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def any_true(self, flag: bool) -> bool:
        """True on every process when `flag` is True on any (decisions all processes must share)."""
        return self.all_reduce_sum([1.0 if flag else 0.0])[0] > 0

    def agree(self, fn: Callable[[], T]) -> T:
        """Run a check on every process; if it fails with a user error on any, fail on all.

        Without this, a process that refuses (a damaged shard, a checkpoint that does not match)
        would exit while the others wait forever at the next collective.
        """
        err: BaseException | None = None
        result = None
        try:
            result = fn()
        except USER_ERRORS as exc:
            err = exc
        if self.distributed:
            messages = self.gather_objects(None if err is None else str(err))
            first = next((m for m in messages if m is not None), None)
            if err is None and first is not None:
                raise UsageError(first)
        if err is not None:
            raise err
        return result  # type: ignore[return-value]


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' -> CUDA when available, else CPU; a clear error when CUDA is asked for but absent."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was requested but CUDA is not available (no GPU, or a CPU-only "
                         "torch build); use --device cpu, or install a CUDA build of torch")
    return device


def default_dtype(device: torch.device) -> torch.dtype:
    """fp32 on CPU (bf16 matmuls are slow there), bf16 on GPU (what the model was trained in)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def resolve_dtype(precision: str, device: str | torch.device) -> torch.dtype:
    """--precision auto|fp32|bf16 -> a torch dtype (auto: fp32 on CPU, bf16 on CUDA)."""
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto":
        return default_dtype(resolve_device(device))
    raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")


def _rank_from_launcher() -> int:
    # torchrun's launch protocol (not user configuration): RANK is exported for each process.
    return int(os.environ.get("RANK", "0")) if _launched_by_torchrun() else 0


def run_cli_on_ranks(fn: Callable[..., T], *args: Any, interrupted: str | Callable[[], str]) -> T:
    """`run_cli` for a script that may run under torchrun: a user error or an interruption ends
    every process with the same exit status, but only rank 0 prints its one line (the others
    would repeat it once per GPU). Bugs keep their traceback on every process."""
    if _rank_from_launcher() == 0:
        return run_cli(fn, *args, interrupted=interrupted)

    def quiet(*a: Any) -> T:
        try:
            return fn(*a)
        except USER_ERRORS:
            raise SystemExit(1) from None
        except Terminated:
            raise SystemExit(143) from None
        except KeyboardInterrupt:
            raise SystemExit(130) from None

    return run_cli(quiet, *args)


def _launched_by_torchrun() -> bool:
    # torchrun's launch protocol (not user configuration): it exports these for each process.
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ


def setup_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """Pick the device and precision; join the process group when started by torchrun."""
    use_cuda = resolve_device(device).type == "cuda"
    rt = Runtime(device=torch.device("cuda" if use_cuda else "cpu"))
    if _launched_by_torchrun():
        rt.distributed = True
        rt.local_rank = int(os.environ["LOCAL_RANK"])
        if use_cuda:
            torch.cuda.set_device(rt.local_rank)
            rt.device = torch.device("cuda", rt.local_rank)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        rt.rank, rt.world_size = dist.get_rank(), dist.get_world_size()
    elif use_cuda:
        rt.device = torch.device("cuda", torch.cuda.current_device())
    if precision == "auto":
        precision = "bf16" if use_cuda else "fp32"
    if precision == "bf16" and use_cuda and not torch.cuda.is_bf16_supported():
        raise UsageError("this GPU has no bf16 support; use --precision fp32")
    rt.precision = precision
    if precision == "bf16":
        rt.amp_dtype = torch.bfloat16
        rt.base_dtype = torch.bfloat16
    return rt


def teardown_runtime(rt: Runtime) -> None:
    if rt.distributed and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def maybe_no_sync(model: torch.nn.Module, skip_sync: bool) -> Iterator[None]:
    """DDP's no_sync for the micro-batches before the last of an accumulation window."""
    if skip_sync and hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    else:
        yield
