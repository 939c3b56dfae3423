"""Running one recipe on several processes under ``torchrun`` (DistributedDataParallel).

``torchrun`` starts one process per GPU (or several on a CPU) and tells each its place
through the environment: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``. :func:`init_from_env` reads them and joins the default process group:

* gloo when the recipe's device is the CPU, NCCL for CUDA tensors (``"cpu:gloo,cuda:nccl"``:
  CPU tensors, such as gathered samples, still go through gloo), picked from the device;
* each rank uses ``cuda:LOCAL_RANK`` (:func:`place`).

Without ``torchrun`` (or with one process) nothing here runs: no process group, no DDP
wrapper, and the single-process results stay bit for bit what they were.

What is global and what is per rank (docs/scaling.md has the user's view):

* ``train.batch_size`` is the **global** batch of one optimization step, all ranks
  together; each rank's micro-batch is ``batch_size / (world_size * grad_accum)``.
* The data order is the single-process order: epoch ``e``'s permutation (seeded by
  ``(seed, e)``, identical on every rank) is cut into global micro-batches, and rank ``r``
  takes the ``r``-th equal slice of each. The union of the ranks' micro-batches is the
  single-process micro-batch, and the stream position (epoch, global micro-batch) is the
  same on every rank and for every world size, so checkpoints resume on any world size.
* Timesteps and noise are drawn for the whole global micro-batch from the run generator
  on every rank (the generators stay identical), and each rank keeps its slice, so sample
  ``i`` gets the same ``t`` and noise as in a single process.
* DDP averages the gradients over ranks: with equal slices, the mean of the per-rank mean
  losses is the global mean loss, so a step equals the single-process step up to float
  rounding.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import torch
from torch import nn

from denoisekit.errors import DataError, DenoisekitError, RecipeError

log = logging.getLogger(__name__)


@attrs.frozen
class DistContext:
    """Where this process stands: its rank among ``world_size`` processes.

    Attributes:
        rank: the global rank (0 .. world_size - 1); rank 0 writes the files.
        world_size: the number of processes; 1 is a plain single-process run.
        local_rank: the rank on this machine; a CUDA rank uses ``cuda:local_rank``.
        backend: the process group's backend, or None when there is none.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """Whether there are several processes (a process group, DDP)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one that logs and writes files."""
        return self.rank == 0

    def label(self) -> str:
        """``rank 1 of 4``."""
        return f"rank {self.rank} of {self.world_size}"


#: The context of a plain single-process run.
SINGLE = DistContext()


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise DataError(f"environment variable {name}={value!r} is not an integer") from None


def launched() -> tuple[int, int] | None:
    """``(rank, world_size)`` when torchrun started this process with several ranks."""
    world_size = _env_int("WORLD_SIZE")
    if world_size is None or world_size <= 1:
        return None
    rank = _env_int("RANK")
    if rank is None:
        raise DataError("WORLD_SIZE is set but RANK is not; start the run with torchrun")
    return rank, world_size


def current() -> DistContext:
    """The context of an initialized default process group, else :data:`SINGLE`."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return SINGLE
    world_size = torch.distributed.get_world_size()
    if world_size <= 1:
        return SINGLE
    return DistContext(
        rank=torch.distributed.get_rank(),
        world_size=world_size,
        local_rank=_env_int("LOCAL_RANK") or 0,
        backend=str(torch.distributed.get_backend()),
    )


def init_from_env(device: str = "auto") -> DistContext:
    """Join the default process group when torchrun started several ranks.

    Args:
        device: the recipe's ``train.device`` (``auto``, ``cpu``, ``cuda``, ...): CUDA
            picks NCCL (with gloo for CPU tensors), the CPU picks gloo.

    Returns:
        :data:`SINGLE` (and nothing is initialized) outside torchrun or with one rank;
        else this rank's context. An already initialized group is reused.
    """
    where = launched()
    if where is None:
        return SINGLE
    if torch.distributed.is_initialized():
        return current()
    if not torch.distributed.is_available():
        raise DataError("torch was built without torch.distributed; run one process")
    rank, world_size = where
    local_rank = _env_int("LOCAL_RANK") or 0
    kwargs: dict[str, Any] = {}
    if _wants_cuda(device):
        _check_local_gpu(local_rank)
        torch.cuda.set_device(local_rank)
        # NCCL starts lazily on the current device (set above), at DDP's first broadcast.
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    timeout_s = _env_int("DENOISEKIT_DIST_TIMEOUT_S")
    if timeout_s is not None:
        kwargs["timeout"] = datetime.timedelta(seconds=timeout_s)
    torch.distributed.init_process_group(
        backend=backend, rank=rank, world_size=world_size, **kwargs
    )
    log.info("joined the process group: rank %d of %d (%s)", rank, world_size, backend)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend)


def _wants_cuda(device: str) -> bool:
    if device == "auto":
        return torch.cuda.is_available()
    return torch.device(device).type == "cuda"


def _check_local_gpu(local_rank: int) -> None:
    count = torch.cuda.device_count()
    if count == 0:
        raise DataError("train.device asks for CUDA, but no GPU is visible to this rank")
    if local_rank >= count:
        raise DataError(
            f"LOCAL_RANK {local_rank} has no GPU: this machine shows {count}; start at most "
            f"--nproc_per_node={count} processes per machine"
        )


def place(device: torch.device, ctx: DistContext) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` for a CUDA run, else ``device``."""
    if not ctx.enabled or device.type != "cuda":
        return device
    if device.index is not None and device.index != ctx.local_rank:
        log.warning(
            "train.device = %r: under torchrun each rank uses cuda:LOCAL_RANK (here cuda:%d)",
            str(device),
            ctx.local_rank,
        )
    _check_local_gpu(ctx.local_rank)
    torch.cuda.set_device(ctx.local_rank)
    return torch.device("cuda", ctx.local_rank)


def shutdown(ctx: DistContext, *, failed: bool = False) -> None:
    """Leave the process group (abort it after a failure, so no rank waits on this one).

    Never raises: it runs while another error is on its way out.
    """
    if not ctx.enabled or not torch.distributed.is_initialized():
        return
    try:
        if failed and ctx.backend is not None and "nccl" in ctx.backend:
            # Pending NCCL collectives would make a plain destroy wait for peers that
            # will never answer; abort tears the communicators down at once.
            from torch.distributed import distributed_c10d

            abort = getattr(distributed_c10d, "_abort_process_group", None)
            if abort is not None:
                abort()
                return
        torch.distributed.destroy_process_group()
    except Exception:  # never mask the error that brought us here
        log.warning("leaving the process group failed", exc_info=True)


def record_error(error: BaseException) -> None:
    """Give torchrun this rank's error, for the summary it prints when a rank fails.

    Writes ``TORCHELASTIC_ERROR_FILE`` (set by torchrun); nothing otherwise.
    """
    if not os.environ.get("TORCHELASTIC_ERROR_FILE"):
        return
    try:
        from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

        ErrorHandler().record_exception(error)
    except Exception:  # pragma: no cover - best effort
        log.debug("could not record the error for torchrun", exc_info=True)


@contextmanager
def session(device: str = "auto") -> Iterator[DistContext]:
    """:func:`init_from_env` for a command, and the way out of it.

    On the way out the process group is left (aborted after an error or an interrupt, so
    that no pending collective waits on peers). An error is recorded for torchrun's
    summary, and a :class:`~denoisekit.errors.DenoisekitError`'s message gets this rank's
    label (``rank 1 of 4: ...``). Outside torchrun it yields :data:`SINGLE` and does
    nothing else.
    """
    ctx = init_from_env(device)
    if not ctx.enabled:
        yield ctx
        return
    try:
        yield ctx
    except BaseException as error:
        if isinstance(error, DenoisekitError) and len(error.args) == 1:
            error.args = (f"{ctx.label()}: {error.args[0]}",)
        if not isinstance(error, KeyboardInterrupt | SystemExit):
            record_error(error)
            if not isinstance(error, DenoisekitError):
                log.error(
                    "%s failed: %s: %s; torchrun stops the other ranks",
                    ctx.label(),
                    type(error).__name__,
                    error,
                )
        shutdown(ctx, failed=True)
        raise
    shutdown(ctx)


# --------------------------------------------------------------------------- training


def check_train_config(train_cfg: Any, ctx: DistContext) -> None:
    """The global batch must split evenly over ranks and micro-batches."""
    if not ctx.enabled:
        return
    batch, accum, world = train_cfg.batch_size, train_cfg.grad_accum, ctx.world_size
    if batch % (world * accum):
        multiple = world * accum
        raise RecipeError(
            f"train.batch_size = {batch} is the global batch (all ranks together) and must "
            f"divide by the world size × train.grad_accum = {world} × {accum} = {multiple}; "
            f"set train.batch_size to a multiple of {multiple} (e.g. "
            f"{max(multiple, batch // multiple * multiple)})"
        )
    if not train_cfg.drop_last:
        raise RecipeError(
            "train.drop_last = false is not supported under torchrun (the last partial batch "
            "would not split evenly over the ranks); set train.drop_last = true"
        )


def wrap_model(model: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(model)``, with ``device_ids`` on CUDA."""
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        return DistributedDataParallel(model, device_ids=[device.index], output_device=device.index)
    return DistributedDataParallel(model)


def seed_per_rank(seed: int, step: int, ctx: DistContext) -> None:
    """Seed torch's global RNG (dropout) differently on each rank.

    The model is initialized from the recipe's seed on every rank (identical weights);
    afterwards dropout masks should differ between ranks, as they differ between the
    samples of one process. Called at build time and after a resume (step > 0).
    """
    if not ctx.enabled:
        return
    torch.manual_seed(derived_seed("dropout", seed, step, ctx.rank))


def derived_seed(*parts: object) -> int:
    """A 63-bit seed from ``parts`` (e.g. a purpose, the seed, the epoch, the rank)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def all_reduce_mean_(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Average ``value`` over the ranks, in place (gloo has no AVG: sum, then divide)."""
    if ctx.enabled:
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.SUM)
        value.div_(ctx.world_size)
    return value


def rank_slice(global_size: int, ctx: DistContext) -> slice:
    """This rank's equal share of ``global_size`` rows (``global_size`` divides evenly)."""
    per_rank = global_size // ctx.world_size
    return slice(ctx.rank * per_rank, (ctx.rank + 1) * per_rank)


# --------------------------------------------------------------------------- sampling


def shard_range(n: int, ctx: DistContext) -> tuple[int, int]:
    """This rank's contiguous share ``[lo, hi)`` of ``n`` items (sizes differ by at most 1)."""
    return n * ctx.rank // ctx.world_size, n * (ctx.rank + 1) // ctx.world_size


def gather_rows(rows: torch.Tensor, n: int, ctx: DistContext) -> torch.Tensor | None:
    """Concatenate every rank's :func:`shard_range` rows on rank 0 (CPU, through gloo).

    Args:
        rows: this rank's rows, ``(hi - lo, ...)``.
        n: the total number of rows.

    Returns:
        The ``(n, ...)`` tensor on rank 0, None on the others.
    """
    if not ctx.enabled:
        return rows
    counts = [
        hi - lo
        for lo, hi in (shard_range(n, attrs.evolve(ctx, rank=r)) for r in range(ctx.world_size))
    ]
    longest = max(counts)
    # A CPU tensor goes through gloo; a group with NCCL alone needs it on the GPU.
    device = torch.device("cuda", torch.cuda.current_device()) if ctx.backend == "nccl" else "cpu"
    padded = torch.zeros((longest, *rows.shape[1:]), dtype=rows.dtype, device=device)
    padded[: rows.shape[0]] = rows
    gathered = [torch.empty_like(padded) for _ in counts] if ctx.is_main else None
    torch.distributed.gather(padded, gather_list=gathered, dst=0)
    if gathered is None:
        return None
    return torch.cat([part[:count] for part, count in zip(gathered, counts, strict=True)]).cpu()
