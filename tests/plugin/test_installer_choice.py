"""Which torch build the set-up installs, from recorded ``nvidia-smi`` output (no GPU needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from geossl_plugin.installer.torch_choice import (
    CPU_INDEX,
    Gpu,
    choose_torch,
    detect_gpus,
    parse_header,
    parse_query,
    parse_version,
    torch_requirements,
)

# `nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader` as printed on…
H200_LINUX = "NVIDIA H200, 580.95.05, 9.0\n"
RTX3060_WINDOWS_OLD_DRIVER = "NVIDIA GeForce RTX 3060, 551.86, 8.6\r\n"
GTX1080_LINUX = "NVIDIA GeForce GTX 1080, 570.172.08, 6.1\n"
RTX5090_LINUX_570 = "NVIDIA GeForce RTX 5090, 570.153.02, 12.0\n"
RTX5090_WINDOWS = "NVIDIA GeForce RTX 5090, 581.57, 12.0\n"
TWO_GPUS = "NVIDIA GeForce GTX 1080 Ti, 581.29, 6.1\nNVIDIA GeForce RTX 4090, 581.29, 8.9\n"
K80_OLD = "Tesla K80, 470.256.02, 3.7\n"
NO_DRIVER = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that "
             "the latest NVIDIA driver is installed and running.\n")
OLD_SMI = 'Field "compute_cap" is not a valid field to query.\n\n'
# Plain `nvidia-smi` of a driver too old for the compute_cap field.
OLD_SMI_TABLE = """\
Mon Mar  4 10:12:01 2024
+-----------------------------------------------------------------------------+
| NVIDIA-SMI 470.82.01    Driver Version: 470.82.01    CUDA Version: 11.4     |
|-------------------------------+----------------------+----------------------+
| GPU  Name        Persistence-M| Bus-Id        Disp.A | Volatile Uncorr. ECC |
|===============================+======================+======================|
|   0  NVIDIA GeForce ...  Off  | 00000000:01:00.0  On |                  N/A |
|   1  Tesla T4            Off  | 00000000:02:00.0 Off |                    0 |
+-------------------------------+----------------------+----------------------+
"""
NEW_SMI_TABLE = """\
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 580.95.05              Driver Version: 580.95.05      CUDA Version: 13.0     |
+-----------------------------------------+------------------------+----------------------+
| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |
|=========================================+========================+======================|
|   0  NVIDIA H200                    On  |   00000000:19:00.0 Off |                    0 |
+-----------------------------------------+------------------------+----------------------+
"""


def test_query_lines_become_gpus_and_error_text_none() -> None:
    assert parse_query(H200_LINUX) == [Gpu("NVIDIA H200", "580.95.05", (9, 0))]
    assert [g.compute_cap for g in parse_query(TWO_GPUS)] == [(6, 1), (8, 9)]
    assert parse_query(RTX3060_WINDOWS_OLD_DRIVER)[0].driver == "551.86", "CRLF from Windows"
    assert parse_query(NO_DRIVER) == [] and parse_query(OLD_SMI) == [] and parse_query("") == []
    assert parse_query("NVIDIA A100, 535.104.05, [N/A]\n") == [Gpu("NVIDIA A100", "535.104.05", None)]


def test_the_plain_table_gives_names_and_the_driver() -> None:
    assert parse_header(OLD_SMI_TABLE) == [Gpu("NVIDIA GeForce ...", "470.82.01"), Gpu("Tesla T4", "470.82.01")]
    assert parse_header(NEW_SMI_TABLE) == [Gpu("NVIDIA H200", "580.95.05")]
    assert parse_header(NO_DRIVER) == []
    assert detect_gpus(OLD_SMI, OLD_SMI_TABLE)[1].name == "Tesla T4", "the table is the fallback"
    assert detect_gpus(H200_LINUX, OLD_SMI_TABLE)[0].name == "NVIDIA H200", "the query wins"


def test_versions_compare_numerically() -> None:
    assert parse_version("580.95.05") == (580, 95, 5) > parse_version("580.65.06")
    assert parse_version("581.57") > (580, 88) and parse_version("") == ()


@pytest.mark.parametrize(("smi", "os_name", "tag"), [
    (H200_LINUX, "linux", "cu130"),
    (GTX1080_LINUX, "linux", "cu126"),  # Pascal: only the 12.6 build still carries sm_60
    (RTX5090_WINDOWS, "windows", "cu130"),
    (TWO_GPUS, "windows", "cu126"),  # the first GPU (cuda:0) decides
    ("NVIDIA GeForce RTX 4090, 560.94, 8.9\n", "windows", "cu126"),  # 13.0 needs 580.88 on Windows
    ("NVIDIA B300, 580.65.06, 10.3\n", "linux", "cu130"),  # sm_100 SASS runs on 10.3
    ("NVIDIA Future, 600.10, 13.0\n", "linux", "cu130"),  # newer than 12.0: JIT from PTX on Linux
])
def test_cuda_build_follows_driver_and_compute_capability(smi: str, os_name: str, tag: str) -> None:
    choice = choose_torch(os_name, "x86_64" if os_name == "linux" else "AMD64", detect_gpus(smi))
    assert (choice.device, choice.tag) == ("cuda", tag), choice.reason
    assert choice.index_url == f"https://download.pytorch.org/whl/{tag}"
    assert choice.pip_index_args() == ["--index-url", choice.index_url]
    assert choice.download_mb > 2000 and choice.free_disk_gb == 6.0


@pytest.mark.parametrize(("smi", "os_name", "words"), [
    (RTX3060_WINDOWS_OLD_DRIVER.replace("551.86", "512.15"), "windows", "update it to 527.41"),
    (RTX5090_LINUX_570, "linux", "update it to 580.65.06"),  # Blackwell: no 12.6 build, 13.0 needs 580
    (K80_OLD, "linux", "not supported"),
    (NO_DRIVER, "linux", "no NVIDIA GPU"),
    ("", "windows", "no NVIDIA GPU"),
    ("NVIDIA Future, 600.10, 13.0\n", "windows", "not supported"),  # PTX is Linux-only
])
def test_unusable_gpus_get_the_cpu_index_and_a_reason(smi: str, os_name: str, words: str) -> None:
    choice = choose_torch(os_name, "x86_64", detect_gpus(smi, smi))
    assert (choice.device, choice.index_url) == ("cpu", CPU_INDEX)
    assert words in choice.reason
    assert choice.download_mb < 500 and choice.free_disk_gb == 2.0


def test_old_driver_read_from_the_table_is_too_old_for_any_build() -> None:
    choice = choose_torch("linux", "x86_64", detect_gpus(OLD_SMI, OLD_SMI_TABLE))
    assert choice.device == "cpu" and "470.82.01" in choice.reason


def test_user_override() -> None:
    h200 = detect_gpus(H200_LINUX)
    assert choose_torch("linux", "x86_64", h200, override="cpu").index_url == CPU_INDEX
    forced = choose_torch("linux", "x86_64", [], override="cuda")
    assert forced.tag == "cu130" and "found no GPU" in forced.reason
    old = choose_torch("windows", "AMD64", detect_gpus(GTX1080_LINUX.replace("570.172.08", "470.10")),
                       override="cuda")
    assert old.tag == "cu126" and "may not support" in old.reason, "forced, but for the build that fits the GPU"
    with pytest.raises(ValueError, match="override"):
        choose_torch("linux", "x86_64", h200, override="rocm")


def test_macs() -> None:
    mps = choose_torch("darwin", "arm64")
    assert (mps.device, mps.index_url, mps.tag) == ("mps", None, "pypi") and mps.pip_index_args() == []
    assert choose_torch("darwin", "arm64", override="cuda").device == "mps"
    assert choose_torch("darwin", "arm64", override="cpu").device == "cpu"
    intel = choose_torch("darwin", "x86_64")
    assert not intel.supported and "Intel" in intel.reason


def test_arm_linux_gets_cpu_even_with_a_gpu() -> None:
    choice = choose_torch("linux", "aarch64", detect_gpus(H200_LINUX))
    assert choice.device == "cpu" and "aarch64" in choice.reason
    assert torch_requirements(choice)[0] == "torch==2.14.1", "ARM CPU wheels carry no +cpu label"


def test_pytorch_index_builds_are_pinned_with_their_label_so_a_switch_reinstalls() -> None:
    cuda = choose_torch("linux", "x86_64", detect_gpus(H200_LINUX))
    assert torch_requirements(cuda) == ["torch==2.14.1+cu130", "torchvision==0.29.1+cu130"]
    assert torch_requirements(choose_torch("windows", "AMD64"))[0] == "torch==2.14.1+cpu"
    assert torch_requirements(choose_torch("darwin", "arm64")) == ["torch==2.14.1", "torchvision==0.29.1"]


def test_pins_match_the_backend() -> None:
    from .conftest import REPO

    pyproject = (REPO / "backend" / "pyproject.toml").read_text()
    for requirement in torch_requirements():
        assert f'"{requirement}"' in pyproject


def test_torch_from_pypi_takes_the_default_index_for_what_each_platform_offers_there() -> None:
    """Networks that block download.pytorch.org but allow (or mirror) PyPI: no --index-url, plain pins."""
    from geossl_plugin.installer.plan import build_plan
    from geossl_plugin.installer.torch_choice import FREE_DISK_GB, PYPI_LINUX_DOWNLOAD_MB

    linux_cpu = choose_torch("linux", "x86_64", [], source="pypi")
    assert (linux_cpu.device, linux_cpu.index_url, linux_cpu.pip_index_args()) == ("cpu", None, [])
    assert torch_requirements(linux_cpu) == ["torch==2.14.1", "torchvision==0.29.1"]
    assert linux_cpu.download_mb == PYPI_LINUX_DOWNLOAD_MB and linux_cpu.free_disk_gb == FREE_DISK_GB["cuda"]
    assert "PyPI" in linux_cpu.reason and "CUDA" in linux_cpu.reason, "the user learns why it is gigabytes"
    linux_gpu = choose_torch("linux", "x86_64", detect_gpus(H200_LINUX), source="pypi")
    assert linux_gpu.device == "cuda" and linux_gpu.index_url is None
    windows_gpu = choose_torch("windows", "AMD64", detect_gpus(RTX5090_WINDOWS), source="pypi")
    assert windows_gpu.device == "cpu" and "CPU-only" in windows_gpu.reason, "PyPI has no CUDA torch for Windows"
    assert choose_torch("darwin", "arm64", source="pypi") == choose_torch("darwin", "arm64")
    assert not choose_torch("darwin", "x86_64", source="pypi").supported
    plan = build_plan(Path("/usr/bin/python3"), Path("/tmp/v"), "linux", linux_cpu, Path("/src"), Path("/r.txt"))
    torch_step = next(step for step in plan.steps if step.key == "torch")
    assert "--index-url" not in torch_step.argv and "torch==2.14.1" in torch_step.argv
    with pytest.raises(ValueError, match="source"):
        choose_torch("linux", "x86_64", source="conda")
