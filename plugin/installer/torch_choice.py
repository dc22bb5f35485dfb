"""Which torch build to install: a CUDA wheel index, the CPU-only one, or plain PyPI (MPS on Macs).

Decided from what ``nvidia-smi`` printed (recorded text, so it is testable without a GPU), the OS
and the machine. A GPU whose driver or compute capability no wheel supports gets the CPU build and
a reason that says what to update: installing a CUDA build that cannot run is the "GPU detected but
CUDA didn't work" trap of field-lessons.md §9. The probe after the install proves the choice.
Stdlib only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

TORCH_VERSION = "2.14.1"
TORCHVISION_VERSION = "0.29.1"
PYTORCH_INDEX = "https://download.pytorch.org/whl"
CPU_INDEX = f"{PYTORCH_INDEX}/cpu"

AUTO, CPU, CUDA = "auto", "cpu", "cuda"
OVERRIDES = (AUTO, CPU, CUDA)
# Where the torch wheels come from: PyTorch's own index (the smallest build for the device) or the
# index pip is configured with (PyPI, or a company mirror of it: networks that block
# download.pytorch.org usually allow that one).
PYTORCH_SOURCE, PYPI_SOURCE = "pytorch", "pypi"
SOURCES = (PYTORCH_SOURCE, PYPI_SOURCE)
# PyPI's torch for Linux x86-64 is the CUDA build (torch + the nvidia-* wheels); it runs on CPUs too.
PYPI_LINUX_DOWNLOAD_MB = 3600

NVIDIA_SMI_QUERY = ("--query-gpu=name,driver_version,compute_cap", "--format=csv,noheader")

Version = tuple[int, ...]


@dataclass(frozen=True)
class CudaBuild:
    """One CUDA variant of the pinned torch on download.pytorch.org."""

    tag: str
    min_driver_linux: str  # as NVIDIA writes it: "580.65.06"
    min_driver_windows: str
    archs: tuple[tuple[int, int], ...]  # SASS compiled into the wheel
    ptx_linux: bool  # the newest arch also as PTX on Linux: newer GPUs JIT-compile it
    download_mb_linux: int  # torch + torchvision + the nvidia-* wheels, measured roughly
    download_mb_windows: int

    @property
    def index_url(self) -> str:
        return f"{PYTORCH_INDEX}/{self.tag}"

    def runs_on(self, cc: tuple[int, int], os_name: str) -> bool:
        """SASS for X.y runs on X.z with z >= y; PTX runs on anything at least as new."""
        if any(major == cc[0] and minor <= cc[1] for major, minor in self.archs):
            return True
        return self.ptx_linux and os_name == "linux" and cc >= max(self.archs)

    def min_driver(self, os_name: str) -> str:
        return self.min_driver_windows if os_name == "windows" else self.min_driver_linux


# torch 2.14 ships CUDA 12.6 (legacy, the only build for Maxwell/Pascal/Volta), 13.0 (stable) and 13.2
# (the PyPI default); 12.8/12.9 were dropped in 2.12. Architectures: pytorch/pytorch RELEASE.md "PyTorch
# CUDA Support Matrix" and the 2.14 RFC pytorch/pytorch#190355 (Linux x86_64 and Windows rows).
# Driver minima: NVIDIA CUDA Toolkit release notes, "CUDA Toolkit and Corresponding Driver Versions"
# (13.0 GA: >= 580.65.06 Linux, >= 580.88 Windows) and the CUDA Compatibility guide's minor-version
# table (any 12.x runtime: >= 525.60.13 Linux, >= 527.41 Windows; the wheels carry SASS, no PTX JIT
# is needed). cu132 is not offered: its driver floor could not be checked offline and cu130 covers
# the same GPUs. Sizes are rough download totals, shown to the user as estimates.
CUDA_BUILDS: tuple[CudaBuild, ...] = (  # preference order
    CudaBuild("cu130", "580.65.06", "580.88", ((7, 5), (8, 0), (8, 6), (9, 0), (10, 0), (12, 0)),
              ptx_linux=True, download_mb_linux=3300, download_mb_windows=2900),
    CudaBuild("cu126", "525.60.13", "527.41", ((5, 0), (6, 0), (7, 0), (7, 5), (8, 0), (8, 6), (9, 0)),
              ptx_linux=False, download_mb_linux=3100, download_mb_windows=2600),
)
CPU_DOWNLOAD_MB = {"linux": 200, "windows": 250, "darwin": 90}
FREE_DISK_GB = {CUDA: 6.0, CPU: 2.0, "mps": 2.0}  # venv + pip cache + unpacking room


@dataclass(frozen=True)
class Gpu:
    name: str
    driver: str
    compute_cap: tuple[int, int] | None = None  # None: old nvidia-smi that cannot report it


@dataclass(frozen=True)
class TorchChoice:
    """What to install and why, in words the set-up dialog shows."""

    device: str  # "cuda" | "cpu" | "mps" — what the probe must prove
    tag: str  # "cu130", "cu126", "cpu" or "pypi"
    index_url: str | None  # None: the default index (PyPI)
    download_mb: int
    reason: str
    supported: bool = True  # False: no torch build exists for this machine at all
    labelled: bool = True  # the index's wheels carry "+<tag>" (x86-64 CPU and CUDA builds do, ARM CPU ones not)
    gpus: tuple[Gpu, ...] = field(default=(), compare=False)
    disk_gb: float | None = None  # None: what the device's build needs (FREE_DISK_GB)

    @property
    def free_disk_gb(self) -> float:
        return self.disk_gb if self.disk_gb is not None else FREE_DISK_GB[self.device]

    @property
    def label(self) -> str:
        return {"cuda": f"CUDA ({self.tag})", "mps": "Apple GPU (MPS)"}.get(self.device, "CPU")

    def pip_index_args(self) -> list[str]:
        return ["--index-url", self.index_url] if self.index_url else []


def torch_requirements(choice: TorchChoice | None = None) -> list[str]:
    """The pins; for a download.pytorch.org build with its local label (``torch==2.14.1+cpu``).

    The label is what makes switching CPU ↔ CUDA in an existing venv work: ``2.14.1+cu130``
    installed satisfies a plain ``==2.14.1``, so pip would keep the old build.
    """
    label = f"+{choice.tag}" if choice is not None and choice.index_url and choice.labelled else ""
    return [f"torch=={TORCH_VERSION}{label}", f"torchvision=={TORCHVISION_VERSION}{label}"]


# --- reading nvidia-smi ------------------------------------------------------------------------------

def parse_version(text: str) -> Version:
    """"560.35.05" → (560, 35, 5); anything unreadable → ()."""
    parts = re.findall(r"\d+", text.strip().split()[0]) if text.strip() else []
    return tuple(int(p) for p in parts)


def _compute_cap(text: str) -> tuple[int, int] | None:
    match = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def parse_query(text: str) -> list[Gpu]:
    """Lines of ``nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader``."""
    gpus = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 3 or not parse_version(fields[1]):
            continue  # error text ("not a valid field", "failed to communicate") or junk
        gpus.append(Gpu(fields[0], fields[1], _compute_cap(fields[2])))
    return gpus


_HEADER_DRIVER = re.compile(r"Driver Version:\s*([\d.]+)")
_TABLE_ROW = re.compile(r"^\|\s+(\d+)\s+(.+?)\s+(?:On|Off)\s+\|")


def parse_header(text: str) -> list[Gpu]:
    """The plain ``nvidia-smi`` table (drivers too old for ``compute_cap``): names and driver only."""
    driver = _HEADER_DRIVER.search(text)
    if not driver:
        return []
    names = [m.group(2) for m in map(_TABLE_ROW.match, text.splitlines()) if m]
    return [Gpu(name, driver.group(1)) for name in names] or [Gpu("NVIDIA GPU", driver.group(1))]


def detect_gpus(query_output: str, header_output: str = "") -> list[Gpu]:
    return parse_query(query_output) or parse_header(header_output)


# --- the choice ------------------------------------------------------------------------------------

def _cpu(os_name: str, reason: str, gpus: tuple[Gpu, ...] = ()) -> TorchChoice:
    # Linux and Windows: the CPU-only index (on Linux PyPI's torch would pull gigabytes of CUDA).
    return TorchChoice(CPU, "cpu", CPU_INDEX, CPU_DOWNLOAD_MB.get(os_name, 250), reason, gpus=gpus)


def _cuda(build: CudaBuild, os_name: str, reason: str, gpus: tuple[Gpu, ...]) -> TorchChoice:
    size = build.download_mb_windows if os_name == "windows" else build.download_mb_linux
    return TorchChoice(CUDA, build.tag, build.index_url, size, reason, gpus=gpus)


def choose_torch(os_name: str, machine: str, gpus: list[Gpu] | tuple[Gpu, ...] = (),
                 override: str = AUTO, source: str = PYTORCH_SOURCE) -> TorchChoice:
    """The build for ``os_name`` ("linux" | "windows" | "darwin") and ``machine`` (platform.machine()).

    ``gpus`` comes from :func:`detect_gpus`; the first GPU decides (torch's default device is
    ``cuda:0``). ``override`` is the user's choice: "auto", "cpu" or "cuda" (CUDA even where the
    detection says no; the probe then has the last word). ``source``: see :data:`SOURCES`.
    """
    if override not in OVERRIDES:
        raise ValueError(f"override must be one of {OVERRIDES}, not {override!r}")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, not {source!r}")
    choice = _choose(os_name, machine, tuple(gpus), override)
    return from_pypi(choice, os_name, machine) if source == PYPI_SOURCE else choice


def from_pypi(choice: TorchChoice, os_name: str, machine: str) -> TorchChoice:
    """``choice`` as the default index (PyPI or its mirror) offers it.

    PyPI has one torch per platform: on Linux x86-64 the CUDA build (gigabytes, but it runs on a
    CPU too), on Windows a CPU-only build (CUDA there comes only from download.pytorch.org), on ARM
    Linux and Macs the same build as PyTorch's index. Wheels on PyPI carry no "+tag" label.
    """
    if not choice.supported or choice.index_url is None:
        return choice
    note = " From PyPI (or your pip's index) instead of download.pytorch.org"
    if os_name == "windows":
        if choice.device == CUDA:
            return replace(choice, device=CPU, tag="pypi", index_url=None, labelled=False,
                           download_mb=CPU_DOWNLOAD_MB["windows"],
                           reason=choice.reason + note + ": PyPI's torch for Windows is CPU-only; for CUDA, "
                           "choose download.pytorch.org.")
        return replace(choice, tag="pypi", index_url=None, labelled=False, reason=choice.reason + note + ".")
    if machine.lower() in ("x86_64", "amd64"):
        return replace(choice, tag="pypi", index_url=None, labelled=False, download_mb=PYPI_LINUX_DOWNLOAD_MB,
                       disk_gb=FREE_DISK_GB[CUDA],
                       reason=choice.reason + note + ": its Linux build carries CUDA (about 3.6 GB) and runs on "
                       "a CPU too.")
    return replace(choice, tag="pypi", index_url=None, labelled=False, reason=choice.reason + note + ".")


def _choose(os_name: str, machine: str, gpus: tuple[Gpu, ...], override: str) -> TorchChoice:
    arch = machine.lower()
    if os_name == "darwin":
        if arch not in ("arm64", "aarch64"):
            return TorchChoice(CPU, "none", None, 0, f"torch {TORCH_VERSION} has no build for Intel Macs "
                               "(PyTorch stopped them after 2.2); use a remote backend.", supported=False)
        if override == CPU:
            return TorchChoice(CPU, "pypi", None, CPU_DOWNLOAD_MB["darwin"], "CPU chosen by you.")
        why = "CUDA does not exist on macOS; " if override == CUDA else ""
        return TorchChoice("mps", "pypi", None, CPU_DOWNLOAD_MB["darwin"],
                           why + "Apple Silicon: the standard build uses the GPU through MPS.")
    if arch not in ("x86_64", "amd64"):
        arm = _cpu(os_name, f"CPU: CUDA builds of torch are offered for x86-64 here, not {machine}.", gpus)
        return replace(arm, labelled=False)
    if override == CPU:
        return _cpu(os_name, "CPU chosen by you.", gpus)
    if not gpus:
        if override == CUDA:
            return _cuda(CUDA_BUILDS[0], os_name, "CUDA chosen by you although nvidia-smi found no GPU; "
                         "the test after the install will tell whether it works.", gpus)
        return _cpu(os_name, "CPU: nvidia-smi found no NVIDIA GPU (or no NVIDIA driver).", gpus)

    gpu = gpus[0]
    driver = parse_version(gpu.driver)
    fits_gpu = [b for b in CUDA_BUILDS if gpu.compute_cap is None or b.runs_on(gpu.compute_cap, os_name)]
    cc_text = f"compute capability {gpu.compute_cap[0]}.{gpu.compute_cap[1]}" if gpu.compute_cap else \
        "unknown compute capability"
    for build in fits_gpu:
        if driver >= parse_version(build.min_driver(os_name)):
            return _cuda(build, os_name, f"CUDA: {gpu.name}, driver {gpu.driver}, {cc_text}.", gpus)
    if override == CUDA:
        build = fits_gpu[0] if fits_gpu else CUDA_BUILDS[0]
        return _cuda(build, os_name, f"CUDA chosen by you for {gpu.name} (driver {gpu.driver}, {cc_text}), "
                     "which this build may not support; the test after the install will tell.", gpus)
    if not fits_gpu:
        return _cpu(os_name, f"CPU: {gpu.name} ({cc_text}) is not supported by the CUDA builds of "
                    f"torch {TORCH_VERSION}.", gpus)
    need = min(fits_gpu, key=lambda b: parse_version(b.min_driver(os_name))).min_driver(os_name)
    return _cpu(os_name, f"CPU: the NVIDIA driver {gpu.driver} of {gpu.name} is too old for a CUDA build of "
                f"torch {TORCH_VERSION}; update it to {need} or newer, then set up CUDA again.", gpus)
