"""The step runner and the whole set-up with real child processes (fake commands, no network): order, log, retries, Cancel.

The whole "Set up backend…" runs against a fake base Python whose ``-m venv`` makes a fake venv
(its pip only records what it was asked), so every step, its program and its arguments are real
except the downloads.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from geossl_plugin.installer.backend_setup import BackendSetup
from geossl_plugin.installer.environment import installer_environ
from geossl_plugin.installer.lock import LOCK_NAME, InstallLock
from geossl_plugin.installer.plan import Step
from geossl_plugin.installer.runner import StepRunner

from .installer_fakes import make_fake_layout, setup_options
from .procs import running

WAIT_MS = 20_000
PY = sys.executable


def _py(code: str, key: str = "s", network: bool = False) -> Step:
    return Step(key, f"step {key}", (PY, "-c", code), network=network)


def _runner(tmp_path: Path, steps: list[Step], **kwargs: Any) -> StepRunner:
    env = installer_environ({"PATH": os.environ["PATH"], "PYTHONPATH": "/qgis/python", "QGIS_PREFIX_PATH": "/q"},
                            proxy="http://ana:secret@proxy:3128")
    return StepRunner(steps, env, tmp_path, tmp_path / "setup.log", retry_delay_ms=10, **kwargs)


def test_steps_run_in_order_clean_without_stdin_in_a_neutral_folder(tmp_path: Path, qtbot: Any) -> None:
    report = tmp_path / "seen.json"
    seen = ("import json, os, sys; json.dump({'stdin': sys.stdin.read(), 'cwd': os.getcwd(), "
            "'pythonpath': os.environ.get('PYTHONPATH'), 'qgis': os.environ.get('QGIS_PREFIX_PATH'), "
            "'proxy': os.environ.get('https_proxy'), 'safe': os.environ.get('PYTHONSAFEPATH')}, "
            f"open({str(report)!r}, 'w')); print('using', os.environ['HTTPS_PROXY'])")
    runner = _runner(tmp_path, [_py("print('one')", "a"), _py(seen, "b"), _py("print('three')", "c")])
    started: list[tuple[int, int, str]] = []
    output: list[str] = []
    runner.step_started.connect(lambda i, n, label: started.append((i, n, label)))
    runner.output.connect(output.append)
    with qtbot.waitSignal(runner.succeeded, timeout=WAIT_MS):
        runner.start()
    assert started == [(0, 3, "step a"), (1, 3, "step b"), (2, 3, "step c")]
    assert json.loads(report.read_text()) == {"stdin": "", "cwd": str(tmp_path), "pythonpath": None, "qgis": None,
                                              "proxy": "http://ana:secret@proxy:3128", "safe": "1"}
    text = "".join(output)
    assert "one" in text and "three" in text and "http://***@proxy:3128" in text and "secret" not in text
    log = (tmp_path / "setup.log").read_text()
    assert "step b" in log and "secret" not in log and "Done" in log
    assert not runner.is_running()


def test_a_failure_stops_and_is_classified(tmp_path: Path, qtbot: Any) -> None:
    fail = "import sys; print('ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device'); sys.exit(1)"
    runner = _runner(tmp_path, [_py("pass", "a"), _py(fail, "b", network=True), _py("print('never')", "c")])
    started: list[int] = []
    runner.step_started.connect(lambda i, _n, _l: started.append(i))
    with qtbot.waitSignal(runner.failed, timeout=WAIT_MS) as blocker:
        runner.start()
    problem, label = blocker.args
    assert (problem.code, label) == ("disk", "step b") and started == [0, 1], "no retry for a full disk"
    assert "[exit status 1]" in (tmp_path / "setup.log").read_text()


def test_network_steps_are_retried(tmp_path: Path, qtbot: Any) -> None:
    counter = tmp_path / "tries"
    flaky = (f"import pathlib, sys; p = pathlib.Path({str(counter)!r}); n = int(p.read_text() if p.exists() else 0) + 1; "
             "p.write_text(str(n)); print('try', n); "
             "sys.exit(0 if n >= 3 else 'Failed to establish a new connection: Temporary failure in name resolution')")
    runner = _runner(tmp_path, [_py(flaky, "net", network=True)])
    labels: list[str] = []
    runner.step_started.connect(lambda _i, _n, label: labels.append(label))
    with qtbot.waitSignal(runner.succeeded, timeout=WAIT_MS):
        runner.start()
    assert labels == ["step net", "step net (try 2)", "step net (try 3)"] and counter.read_text() == "3"

    counter.unlink()
    never = _runner(tmp_path, [_py(flaky.replace("n >= 3", "n >= 9"), "net", network=True)])
    with qtbot.waitSignal(never.failed, timeout=WAIT_MS) as blocker:
        never.start()
    assert blocker.args[0].code == "network" and counter.read_text() == "3", "two retries, then the action"


def test_cancel_kills_the_running_step(tmp_path: Path, qtbot: Any) -> None:
    pid_file = tmp_path / "pid"
    sleeper = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    runner = _runner(tmp_path, [_py(sleeper, "slow"), _py("print('never')", "after")])
    runner.start()
    qtbot.waitUntil(lambda: pid_file.exists() and pid_file.read_text() != "", timeout=WAIT_MS)
    pid = int(pid_file.read_text())
    with qtbot.waitSignal(runner.cancelled, timeout=WAIT_MS):
        runner.cancel()
    qtbot.waitUntil(lambda: not running(pid), timeout=WAIT_MS)
    assert not runner.is_running() and "Cancelled" in (tmp_path / "setup.log").read_text()


def test_a_hung_local_step_times_out_and_a_missing_program_is_reported(tmp_path: Path, qtbot: Any) -> None:
    runner = _runner(tmp_path, [_py("import time; time.sleep(60)", "hang")], step_timeout_s=0.5)
    with qtbot.waitSignal(runner.failed, timeout=WAIT_MS) as blocker:
        runner.start()
    assert blocker.args[0].code == "timeout"
    missing = _runner(tmp_path, [Step("x", "run nothing", (str(tmp_path / "no-such-python"),))])
    with qtbot.waitSignal(missing.failed, timeout=WAIT_MS) as blocker:
        missing.start()
    assert blocker.args[0].code == "start" and "no-such-python" in blocker.args[0].message


# --- the whole set-up against a fake Python -----------------------------------------------------------

@pytest.fixture
def fake_layout(tmp_path: Path, fake_backend: Any) -> dict[str, Path]:
    return make_fake_layout(tmp_path, fake_backend)


def _setup(layout: dict[str, Path], **kwargs: Any) -> BackendSetup:
    return BackendSetup(layout["plugin"], layout["root"], **setup_options(layout), **kwargs)


def test_whole_setup_from_gpu_detection_to_the_backend_path(fake_layout: dict[str, Path], qtbot: Any) -> None:
    setup = _setup(fake_layout)
    plans: list[Any] = []
    setup.planned.connect(plans.append)
    problems: list[Any] = []
    done: list[str] = []
    setup.failed.connect(problems.append)
    setup.succeeded.connect(done.append)
    setup.start()
    assert setup.is_running()
    qtbot.waitUntil(lambda: bool(problems or done), timeout=WAIT_MS)
    assert problems == [], (fake_layout["root"] / "setup.log").read_text()[-3000:]
    venv = fake_layout["root"] / "venv-py3.12"
    assert done == [str(venv / "bin" / "geossl")]
    assert plans[0].choice.tag == "cu130" and setup.nvidia_smi == "NVIDIA H200, 580.95.05, 9.0"
    calls = [json.loads(line) for line in fake_layout["calls"].read_text().splitlines()]
    assert calls[0] == [str(fake_layout["good"]), ["-m", "venv", str(venv)]], "3.9 refused; venv made by 3.12"
    assert all(program == str(venv / "bin" / "python") for program, _ in calls[1:])
    pip = [args for _, args in calls if args[:2] == ["-m", "pip"]]
    assert pip[0][-2:] == ["--upgrade", "pip"]
    assert pip[1][-4:] == ["--index-url", "https://download.pytorch.org/whl/cu130", "torch==2.14.1+cu130",
                           "torchvision==0.29.1+cu130"]
    assert pip[2][-1] == str(venv / "geossl-src") and (venv / "geossl-src" / "pyproject.toml").is_file()
    assert ["probe", "cuda"] in [args for _, args in calls]
    assert not (fake_layout["root"] / LOCK_NAME).exists(), "the lock is released"
    log = (fake_layout["root"] / "setup.log").read_text()
    assert "refused" in log and "older than 3.10" in log and "cu130" in log


def test_setup_refuses_while_another_window_installs(fake_layout: dict[str, Path], qtbot: Any) -> None:
    other = InstallLock(fake_layout["root"], pid=os.getppid())
    other.acquire()
    setup = _setup(fake_layout, override="cpu")
    with qtbot.waitSignal(setup.failed, timeout=WAIT_MS) as blocker:
        setup.start()
    assert blocker.args[0].code == "busy" and "process" in blocker.args[0].message
    assert not fake_layout["calls"].exists(), "no venv, no pip: nothing ran"
    assert InstallLock(fake_layout["root"]).owner() == os.getppid(), "the other window's lock is left alone"
    other.release()


def test_setup_checks_the_disk_before_downloading(fake_layout: dict[str, Path], qtbot: Any) -> None:
    setup = BackendSetup(fake_layout["plugin"], fake_layout["root"], os_name="linux", machine="x86_64",
                         which=lambda _n: None, candidates=[fake_layout["good"]],
                         disk_usage=lambda _p: (10**12, 10**12, 10**9))
    with qtbot.waitSignal(setup.failed, timeout=WAIT_MS) as blocker:
        setup.start()
    assert blocker.args[0].code == "disk" and "1.0 GB free" in blocker.args[0].message
    assert setup.choice is not None and setup.choice.device == "cpu"


def test_no_usable_python_says_which_were_refused(fake_layout: dict[str, Path], qtbot: Any) -> None:
    setup = BackendSetup(fake_layout["plugin"], fake_layout["root"], os_name="linux", machine="x86_64",
                         which=lambda _n: None, candidates=[fake_layout["old"]])
    with qtbot.waitSignal(setup.failed, timeout=WAIT_MS) as blocker:
        setup.start()
    assert blocker.args[0].code == "python" and "3.9.18 is older than 3.10" in blocker.args[0].message


def test_only_a_finished_setup_is_marked_ready(fake_layout: dict[str, Path], qtbot: Any) -> None:
    from geossl_plugin.installer.locations import READY_MARKER

    setup = _setup(fake_layout, override="cpu")
    with qtbot.waitSignal(setup.succeeded, timeout=WAIT_MS):
        setup.start()
    marker = fake_layout["root"] / "venv-py3.12" / READY_MARKER
    assert json.loads(marker.read_text())["torch"] == "cpu"
    fake_layout["geossl"].write_text(f"#!{sys.executable}\nimport sys\nsys.exit('torch: DLL load failed')\n")
    broken = _setup(fake_layout, override="cpu")
    with qtbot.waitSignal(broken.failed, timeout=WAIT_MS) as blocker:
        broken.start()
    assert blocker.args[0].code == "vcredist"
    assert not marker.exists(), "a run that failed its last check is not ready, even over a good venv"


def test_a_blocked_pytorch_index_suggests_pypi_and_pypi_then_installs(fake_layout: dict[str, Path],
                                                                      qtbot: Any) -> None:
    Path(str(fake_layout["calls"]) + ".no-pytorch-index").write_text("")
    blocked = _setup(fake_layout, override="cpu")
    with qtbot.waitSignal(blocked.failed, timeout=WAIT_MS) as blocker:
        blocked.start()
    problem = blocker.args[0]
    assert problem.code == "network" and "'torch from' to PyPI" in problem.action
    assert not (fake_layout["root"] / LOCK_NAME).exists()

    from_pypi = _setup(fake_layout, override="cpu", source="pypi")
    with qtbot.waitSignal(from_pypi.succeeded, timeout=WAIT_MS):
        from_pypi.start()
    pip = [args for _, args in map(json.loads, fake_layout["calls"].read_text().splitlines())
           if args[:2] == ["-m", "pip"]]
    assert pip[-2][-2:] == ["torch==2.14.1", "torchvision==0.29.1"] and "--index-url" not in pip[-2]
    assert from_pypi.plan is not None and from_pypi.plan.choice.tag == "pypi"
