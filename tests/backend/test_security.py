"""The security list of issue #8, point by point, where test_service.py leaves a gap.

- the token is compared in constant time (``hmac.compare_digest``);
- output paths never land in the backend's code, its venv or the service's own files, also
  through a symbolic link; ``models/`` and ``outputs/`` of the data folder are allowed;
- no request text is evaluated: shell text in paths is a file name like any other, a model with
  pickled code is refused without running it, and the backend's code has no eval/exec/pickle/shell;
- checkpoints load with ``weights_only=True``.
"""

from __future__ import annotations

import ast
import os
import pickle
import sys
from pathlib import Path

import geossl
import pytest
from geossl.errors import GeoSSLError
from geossl.service import auth
from geossl.service.checks import OutputPolicy

from tests.backend.service_helpers import segmentation_model, start_server
from tests.data import two_class_raster

PACKAGE = Path(geossl.__file__).resolve().parent


def test_token_is_compared_in_constant_time(monkeypatch):
    calls = []

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return a == b

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert auth.token_matches("s3cret-token-value", "Bearer s3cret-token-value")
    assert not auth.token_matches("s3cret-token-value", "Bearer s3cret-token-valuX")
    assert not auth.token_matches("s3cret-token-value", "Basic s3cret-token-value")  # wrong scheme
    assert len(calls) == 2 and all(isinstance(a, bytes) for a, _ in calls)


def test_output_policy_keeps_the_backend_and_the_data_folder_safe(tmp_path):
    data = tmp_path / "data"
    for sub in ("models", "outputs", "logs"):
        (data / sub).mkdir(parents=True)
    policy = OutputPolicy(data)
    refused = {
        PACKAGE / "pwned.py": "the GeoSSL backend's code",
        Path(sys.prefix) / "lib" / "pwned.pth": "the backend's Python environment",
        data / "jobs.sqlite": "the service's data folder",
        data / "logs" / "service.log": "the service's data folder",
    }
    link = tmp_path / "innocent"
    link.symlink_to(PACKAGE)  # a link into the code is followed, not trusted
    refused[link / "pwned.py"] = "the GeoSSL backend's code"
    for path, what in refused.items():
        if not path.parent.is_dir():
            continue
        with pytest.raises(GeoSSLError, match="where the service never writes") as err:
            policy.check(path)
        assert what in str(err.value), (path, err.value)
    assert policy.check(data / "models" / "m.pt") == (data / "models" / "m.pt").resolve()
    assert policy.check(data / "outputs" / "c.tif") == (data / "outputs" / "c.tif").resolve()
    assert policy.check(tmp_path / "mine.tif") == (tmp_path / "mine.tif").resolve()


class Evil:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['PWNED'], 'w').write('x')",))


def test_no_request_text_is_ever_run(tmp_path):
    marker = tmp_path / "PWNED"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    data = tmp_path / "data"
    (data / "models").mkdir(parents=True)
    with open(data / "models" / "evil.pt", "wb") as fh:
        pickle.dump({"format": "geossl", "kind": "segmentation", "x": Evil()}, fh)
    os.environ["PWNED"] = str(marker)  # inherited by the service: what the pickle would write to
    try:
        service = start_server(tmp_path, "--no-prewarm", cwd=cwd, data_dir=data)
    finally:
        del os.environ["PWNED"]
    try:
        raster = two_class_raster(tmp_path / "scene.tif")
        model = segmentation_model(tmp_path / "m.pt")
        shell = [f"$(touch {marker})", f"`touch {marker}`", f"x; touch {marker}", f"| touch {marker}",
                 "__import__('os').system('touch PWNED')"]
        for text in shell:
            r = service.post("/jobs/predict", {"model": str(model), "raster": text, "out": str(tmp_path / "c.tif")})
            assert r.status_code == 422 and "does not exist" in r.json()["detail"], r.text
            r = service.post("/jobs/predict", {"model": text, "raster": str(raster), "out": str(tmp_path / "c.tif")})
            assert r.status_code == 422, r.text
        r = service.post("/jobs/predict", {"model": str(data / "models" / "evil.pt"), "raster": str(raster),
                                           "out": str(tmp_path / "c.tif")})
        assert r.status_code == 422 and "cannot be loaded" in r.json()["detail"], r.text
        listed = {m["name"]: m for m in service.get("/models").json()["models"]}
        assert "cannot be loaded" in listed["evil.pt"]["error"]
        assert not marker.exists() and list(cwd.iterdir()) == []
        assert service.get("/jobs").json()["jobs"] == []
    finally:
        assert service.stop() == 0, service.log_text()


def test_backend_code_has_no_eval_exec_pickle_or_shell():
    """A static guard: nothing in the backend can run text or unpickle objects."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
                owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
                if name in ("eval", "exec", "compile") and isinstance(f, ast.Name):
                    found.append(f"{path.name}:{node.lineno} {name}()")
                if owner in ("pickle", "marshal", "dill") or (owner == "os" and name in ("system", "popen")):
                    found.append(f"{path.name}:{node.lineno} {owner}.{name}()")
                if any(k.arg == "shell" and getattr(k.value, "value", False) is True for k in node.keywords):
                    found.append(f"{path.name}:{node.lineno} shell=True")
                if owner == "torch" and name == "load" and not any(
                        k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in node.keywords):
                    found.append(f"{path.name}:{node.lineno} torch.load without weights_only=True")
    assert found == []
