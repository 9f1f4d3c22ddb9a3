"""Settings: what is sampled (:class:`SamplingConfig`) and where it runs (:class:`Runtime`).

Every default and every rule of a setting is written here once; the CLI, experiment
files and the Python API all go through these. The module imports neither torch nor
numpy at module level, so the CLI can check settings (one-line ``ValueError``\\ s saying what to
do) before torch is loaded; only :meth:`Runtime.resolved`, :meth:`Runtime.apply` and
:meth:`Runtime.torch_dtype` import it.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from dataclasses import asdict, dataclass

__all__ = ["SamplingConfig", "Runtime", "SAMPLING_KEYS", "RUNTIME_KEYS", "ENGINES", "DTYPES",
           "MAX_NEW_TOKENS", "MAX_ROLLOUTS", "DEFAULT_BATCH_SIZE", "check_integer",
           "check_sampling", "check_batch_memory", "check_prompts_per_task", "check_runtime", "check_ray",
           "default_threads", "resolve_device", "ALGORITHM_VERSION"]

#: Engines: the built-in loop on transformers, or vLLM (:mod:`canopy.engines`).
ENGINES = ("hf", "vllm")
#: Weight dtypes a model can run in (statistics are float32 whatever the weights).
DTYPES = ("float32", "bfloat16", "float16")
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")
#: Upper bounds: beyond them a run cannot finish (memory, time) on any machine here.
MAX_NEW_TOKENS = 1 << 20
MAX_ROLLOUTS = 1 << 20
#: Rows (rollouts) per forward pass when none is given (sampling and scoring).
DEFAULT_BATCH_SIZE = 16
#: The version of canopy's sampling algorithm (defined here, torch-free, so that a store
#: is read without importing torch; :mod:`canopy.sampling` uses it). Bump when the
#: sampling algorithm or prompt rendering changes in a way that changes results; cached
#: rollouts of another version are resampled, never reused.
#: 2: a tokenizer converted from a GGUF puts BOS in front of raw prompts when the GGUF
#: says so (:func:`canopy.models.apply_gguf_bos`; Gemma did not get it under transformers 5).
ALGORITHM_VERSION = 2


# ------------------------------------------------------------------------------- rules


def check_integer(name: str, value, low: int, high: int | None = None) -> None:
    """``value`` is ``None`` or an integer in ``[low, high]``; else a one-line error."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be ≥ {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be ≤ {high}, got {value}")


def check_prompts_per_task(value) -> None:
    """``prompts_per_task``: ``None`` (all prompts) or an integer ≥ 1."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"prompts_per_task must be a positive integer (or left out for all "
                         f"prompts), got {value}")


def _total_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


@dataclass(frozen=True)
class SamplingConfig:
    """Sampling settings. ``rollouts``: M per prompt (≥ 1). ``max_new_tokens``: T_max.
    ``temperature`` > 0. ``top_k`` ≥ 0 (0 = off; default 100, the paper's setting).
    ``top_p`` in (0, 1] (1 = off). ``seed``: integer ≥ 0. ``batch_size``: rows (rollouts)
    per forward pass; it does not change the distribution (see :mod:`canopy.sampling` on
    determinism)."""

    rollouts: int = 8
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_k: int = 100
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = DEFAULT_BATCH_SIZE

    def __post_init__(self) -> None:
        check_integer("rollouts", self.rollouts, 1, MAX_ROLLOUTS)
        check_integer("max_new_tokens", self.max_new_tokens, 1, MAX_NEW_TOKENS)
        check_integer("top_k", self.top_k, 0)
        check_integer("seed", self.seed, 0)
        check_integer("batch_size", self.batch_size, 1)
        for name in ("temperature", "top_p"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"{name} must be a number, got {value!r}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number > 0 (greedy decoding is "
                             f"not sampling), got {self.temperature}")
        if not (0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")

    def distribution(self) -> dict:
        """The settings that define the sampled distribution (batch_size excluded)."""
        d = asdict(self)
        d.pop("batch_size")
        return d


#: The fields of :class:`SamplingConfig`.
SAMPLING_KEYS = tuple(SamplingConfig.__dataclass_fields__)


def check_sampling(settings: dict) -> SamplingConfig:
    """The :class:`SamplingConfig` of ``settings`` (``None`` values mean "default"; a
    ``prompts_per_task`` key is checked and left out; unknown keys are errors)."""
    settings = {k: v for k, v in settings.items() if v is not None}
    check_prompts_per_task(settings.pop("prompts_per_task", None))
    unknown = set(settings) - set(SAMPLING_KEYS)
    if unknown:
        raise ValueError(f"unknown sampling setting(s) {', '.join(sorted(unknown))}; "
                         f"allowed: {', '.join(SAMPLING_KEYS)}")
    return SamplingConfig(**settings)


def check_batch_memory(config: SamplingConfig, n_prompts: int | None = None) -> None:
    """The random numbers of one batch (``batch_size`` × ``max_new_tokens`` float64;
    fewer rows when only ``n_prompts`` × ``rollouts`` exist) fit in half the memory."""
    rows = config.batch_size
    if n_prompts is not None:
        rows = min(rows, n_prompts * config.rollouts)
    need = rows * config.max_new_tokens * 8
    memory = _total_memory()
    if memory and need > memory / 2:
        raise ValueError(f"batch_size × max_new_tokens = {rows} × {config.max_new_tokens} "
                         f"needs {need / 2**30:.0f} GiB for the random numbers alone "
                         f"({memory / 2**30:.0f} GiB of memory); lower --batch-size or "
                         "--max-new-tokens")


# ------------------------------------------------------------------------- the runtime

_DEFAULT_THREADS: list[int] = []


def default_threads() -> int:
    """The CPU thread count used when none is given: what torch would use on an idle
    machine (its default, which honours ``OMP_NUM_THREADS``, read the first time this is
    called — :mod:`canopy.sampling` calls it on import, before any thread count is set),
    capped by the CPUs this process may run on. Deterministic (it does not look at the
    load), so it can go into the configuration hash. Robustness on a busy machine comes
    from OpenMP's passive wait policy, set in :mod:`canopy` (see README, Threads)."""
    if not _DEFAULT_THREADS:
        import torch

        _DEFAULT_THREADS.append(torch.get_num_threads())
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    return max(1, min(_DEFAULT_THREADS[0], usable))


def resolve_device(device: str) -> str:
    """A concrete device for ``device`` (``auto``: CUDA when available, else CPU); an
    unavailable device is a one-line ``ValueError``. Imports torch."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available "
                             "(torch.cuda.is_available() is False); use --device cpu")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} requested but only "
                             f"{torch.cuda.device_count()} CUDA device(s) exist")
    elif device == "mps" and not (getattr(torch.backends, "mps", None)
                                  and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' requested but MPS is not available; use --device cpu")
    return device


@dataclass(frozen=True)
class Runtime:
    """Where and how a model runs: settings that can change results by floating-point
    rounding but do not define the sampled distribution.

    ``engine``: ``"hf"`` (the built-in decode loop on transformers) or ``"vllm"``
    (:mod:`canopy.vllm_engine`, optional). ``device``: ``auto`` (CUDA when available,
    else CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``. ``dtype``: of the weights,
    ``float32`` (default), ``bfloat16`` or ``float16``; statistics are always computed in
    float32 from the logits the model produced. ``threads``: CPU threads (``None``:
    :func:`default_threads`). Use :meth:`resolved` for the concrete device and threads.
    """

    engine: str = "hf"
    device: str = "auto"
    dtype: str = "float32"
    threads: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.threads, numbers.Integral) and not isinstance(self.threads, int):
            object.__setattr__(self, "threads", int(self.threads))
        check_runtime(asdict(self))

    def resolved(self) -> "Runtime":
        """The same runtime with a concrete ``device`` (``auto`` resolved; an unavailable
        device is a one-line ``ValueError``) and ``threads`` (the default filled in)."""
        threads = self.threads if self.threads is not None else default_threads()
        return Runtime(engine=self.engine, device=resolve_device(self.device),
                       dtype=self.dtype, threads=int(threads))

    @property
    def device_type(self) -> str:
        """``cpu``, ``cuda`` or ``mps`` (``auto`` resolved)."""
        return resolve_device(self.device).split(":")[0]

    def record(self) -> dict:
        """What goes into the configuration hash: engine, device type, dtype and, on CPU,
        the thread count (CPU kernels split reductions by thread, so results differ by
        ~1e-5 nats between thread counts; on a GPU the CPU threads do not touch the math).
        """
        r = self.resolved()
        kind = r.device.split(":")[0]
        return {"engine": r.engine, "device_type": kind, "dtype": r.dtype,
                "threads": r.threads if kind == "cpu" else None}

    def apply(self) -> None:
        """Set torch's intra-op thread count to the resolved ``threads``."""
        import torch

        threads = self.resolved().threads
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)

    def torch_dtype(self):
        """The ``torch.dtype`` of :attr:`dtype`."""
        import torch

        return getattr(torch, self.dtype)


#: The fields of :class:`Runtime`.
RUNTIME_KEYS = tuple(Runtime.__dataclass_fields__)


def check_runtime(settings: dict) -> None:
    """Runtime settings (``engine``, ``device``, ``dtype``, ``threads``; a missing or
    ``None`` value means the default). Whether the device exists is checked later, by
    :meth:`Runtime.resolved` (it needs torch)."""
    unknown = set(settings) - set(RUNTIME_KEYS)
    if unknown:
        raise ValueError(f"unknown runtime setting(s) {', '.join(sorted(unknown))}; "
                         f"allowed: {', '.join(RUNTIME_KEYS)}")
    engine, device, dtype = (settings.get(k) for k in ("engine", "device", "dtype"))
    if engine is not None and engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if device is not None and (not isinstance(device, str) or not DEVICE_PATTERN.fullmatch(device)):
        raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    threads = settings.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise ValueError(f"threads must be an integer ≥ 1 (or None for the default), "
                         f"got {threads!r}")


def check_ray(ray, workers, out) -> None:
    """The Ray arguments of a run (``ray``: ``True`` or an address; ``workers``: Ray
    workers ≥ 1; ``out``: the store every worker writes). One-line errors, before Ray is
    imported or a model loaded."""
    if ray in (None, False):
        raise ValueError("workers=N needs ray (--ray [ADDRESS]): workers are Ray workers")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise ValueError(f"workers must be an integer ≥ 1 (Ray workers), got {workers!r}")
    if ray is not True and not (isinstance(ray, str) and ray):
        raise ValueError(f"ray must be True (a local instance) or an address HOST:PORT, got "
                         f"{ray!r}")
    if out is None:
        raise ValueError("sampling on Ray needs a store directory (out / --out) that every "
                         "worker can write")
