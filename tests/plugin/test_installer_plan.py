"""The set-up's commands as data, the free-disk check and the lock against two QGIS windows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from geossl_plugin.installer.lock import InstallLock, LockBusy, pid_alive
from geossl_plugin.installer.plan import BACKEND_COPY, TORCH_PROBE, build_plan, free_space_problem
from geossl_plugin.installer.torch_choice import choose_torch, detect_gpus

from .conftest import REPO


def _plan(tmp_path: Path, os_name: str = "linux", smi: str = "", fresh: bool = False):
    choice = choose_torch(os_name, "x86_64", detect_gpus(smi))
    return build_plan(Path("/usr/bin/python3"), tmp_path / "venv-py3.11", os_name, choice,
                      tmp_path / "plugin" / "backend_src", tmp_path / "plugin" / "backend_src" / "requirements.txt",
                      fresh=fresh)


def test_steps_in_order_all_run_by_the_venv_python(tmp_path: Path) -> None:
    plan = _plan(tmp_path, smi="NVIDIA H200, 580.95.05, 9.0\n")
    venv = tmp_path / "venv-py3.11"
    assert [s.key for s in plan.steps] == ["venv", "pip", "torch", "copy", "backend", "probe", "check"]
    assert plan.steps[0].argv == ("/usr/bin/python3", "-m", "venv", str(venv))
    py = str(venv / "bin" / "python")
    assert all(s.argv[0] == py for s in plan.steps[1:-1]), "nothing runs QGIS's Python after the venv exists"
    assert plan.steps[-1].argv == (str(venv / "bin" / "geossl"), "info", "--json")
    assert plan.geossl == venv / "bin" / "geossl"


def test_torch_comes_pinned_from_the_chosen_index_and_the_backend_from_its_copy(tmp_path: Path) -> None:
    plan = _plan(tmp_path, smi="NVIDIA H200, 580.95.05, 9.0\n")
    torch = next(s for s in plan.steps if s.key == "torch").argv
    assert torch[-4:] == ("--index-url", "https://download.pytorch.org/whl/cu130", "torch==2.14.1+cu130",
                          "torchvision==0.29.1+cu130")
    assert "--no-input" in torch and "--retries" in torch
    backend = next(s for s in plan.steps if s.key == "backend").argv
    assert backend[-3:] == ("-r", str(tmp_path / "plugin" / "backend_src" / "requirements.txt"),
                            str(tmp_path / "venv-py3.11" / BACKEND_COPY))
    assert "--index-url" not in backend, "the rest comes from the user's normal index"
    probe = next(s for s in plan.steps if s.key == "probe")
    assert probe.argv[-1] == "cuda" and probe.argv[2] == TORCH_PROBE
    assert {s.key for s in plan.steps if s.network} == {"pip", "torch", "backend"}
    assert plan.download_mb > 3000 and plan.choice.free_disk_gb == 6


def test_cpu_and_windows_and_reinstall(tmp_path: Path) -> None:
    cpu = _plan(tmp_path, "windows", fresh=True)
    assert cpu.steps[0].argv[3] == "--clear"
    assert cpu.python == tmp_path / "venv-py3.11" / "Scripts" / "python.exe"
    assert cpu.geossl == tmp_path / "venv-py3.11" / "Scripts" / "geossl.exe"
    assert "https://download.pytorch.org/whl/cpu" in next(s for s in cpu.steps if s.key == "torch").argv
    assert cpu.download_mb < 600


def test_the_copy_step_leaves_the_checkouts_venv_and_build_junk_behind(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "geossl").mkdir(parents=True)
    (source / "geossl" / "__init__.py").write_text("")
    (source / "pyproject.toml").write_text("[project]\n")
    for junk in (".venv/bin", "geossl.egg-info", "geossl/__pycache__", "build/lib"):
        (source / junk).mkdir(parents=True)
    copy = next(s for s in _plan(tmp_path).steps if s.key == "copy")
    target = tmp_path / "copy"
    (target / "stale").mkdir(parents=True)
    subprocess.run([sys.executable, "-c", copy.argv[2], str(source), str(target)], check=True, timeout=30)
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == [
        "geossl", "geossl/__init__.py", "pyproject.toml"]


def test_probe_refuses_a_device_torch_cannot_use(tmp_path: Path) -> None:
    # A fake `torch` module: CUDA absent; the probe must fail for "cuda" and pass for "cpu" maths.
    fake = tmp_path / "fake"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text(
        "__version__ = '2.14.1+cpu'\n"
        "class version: cuda = None\n"
        "class cuda:\n    is_available = staticmethod(lambda: False)\n    device_count = staticmethod(lambda: 0)\n")
    result = subprocess.run([sys.executable, "-c", TORCH_PROBE, "cuda"], capture_output=True, text=True,
                            timeout=30, env={**os.environ, "PYTHONPATH": str(fake)}, check=False)
    assert result.returncode == 1 and "CUDA not usable by torch 2.14.1+cpu" in result.stderr


@pytest.mark.skipif(not (REPO / "backend" / ".venv" / "bin" / "python").exists()
                    and not Path("/work/main/backend/.venv/bin/python").exists(), reason="no backend venv")
def test_probe_computes_on_the_cpu_with_real_torch() -> None:
    python = REPO / "backend" / ".venv" / "bin" / "python"
    python = python if python.exists() else Path("/work/main/backend/.venv/bin/python")
    result = subprocess.run([str(python), "-c", TORCH_PROBE, "cpu"], capture_output=True, text=True, timeout=120,
                            check=False, env={"PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["ok"] and answer["device"] == "cpu" and answer["torch"].startswith("2.14.1")


def test_free_disk_check_measures_the_nearest_existing_folder(tmp_path: Path) -> None:
    seen: list[Path] = []

    def usage(path: Path) -> tuple[int, int, int]:
        seen.append(path)
        return (100 * 10**9, 99 * 10**9, int(1.5 * 10**9))

    assert "1.5 GB free, about 6 GB needed" in free_space_problem(tmp_path / "a" / "b", 6, usage)
    assert seen == [tmp_path]
    assert free_space_problem(tmp_path, 1.0, usage) == ""


def test_lock_blocks_a_live_owner_and_takes_over_a_dead_one(tmp_path: Path) -> None:
    first = InstallLock(tmp_path)
    first.acquire()
    other = InstallLock(tmp_path, pid=os.getppid())  # another live process wants it
    with pytest.raises(LockBusy, match=f"process {os.getpid()}"):
        InstallLock(tmp_path, pid=os.getppid()).acquire()
    first.release()
    assert not (tmp_path / "setup.lock").exists()
    with other:
        assert other.held and json.loads((tmp_path / "setup.lock").read_text())["pid"] == os.getppid()
    assert not (tmp_path / "setup.lock").exists()

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert not pid_alive(dead.pid)
    (tmp_path / "setup.lock").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    with InstallLock(tmp_path) as taken:
        assert taken.owner() == os.getpid(), "a crashed QGIS's lock is stale"
    (tmp_path / "setup.lock").write_text("garbage")
    with InstallLock(tmp_path) as taken:
        assert taken.held
