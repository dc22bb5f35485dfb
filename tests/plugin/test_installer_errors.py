"""Failed set-up steps become actions; the log and the diagnostics report carry no credentials."""

from __future__ import annotations

from pathlib import Path

import pytest
from geossl_plugin.installer.diagnostics import Facts, report
from geossl_plugin.installer.errors import classify
from geossl_plugin.installer.logfile import append, header, scrub, tail

# Last lines of real-world pip/venv/torch failures (as quoted in the GeoAI/TerraLab trackers, trimmed).
OUTPUTS = {
    "proxy": "WARNING: Retrying (Retry(total=4)) after connection broken by 'ProxyError('Cannot connect to proxy.', "
             "OSError('Tunnel connection failed: 407 Proxy Authentication Required'))': /simple/pip/",
    "ssl": "Could not fetch URL https://pypi.org/simple/pip/: There was a problem confirming the ssl certificate: "
           "HTTPSConnectionPool(host='pypi.org', port=443): Max retries exceeded (Caused by SSLError("
           "SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self signed "
           "certificate in certificate chain (_ssl.c:1006)')))",
    "network": "WARNING: Retrying (Retry(total=0)) after connection broken by 'NewConnectionError('<pip._vendor."
               "urllib3.connection.HTTPSConnection object>: Failed to establish a new connection: [Errno -3] "
               "Temporary failure in name resolution')': /whl/cu130/torch/\nERROR: Could not find a version that "
               "satisfies the requirement torch==2.14.1 (from versions: none)",
    "disk": "ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device",
    "python": "ERROR: Could not find a version that satisfies the requirement torch==2.14.1 (from versions: none)\n"
              "ERROR: No matching distribution found for torch==2.14.1",
    "vcredist": "OSError: [WinError 126] The specified module could not be found. Error loading "
                "\"C:\\Users\\ana\\AppData\\Local\\geossl\\venv-py3.12\\Lib\\site-packages\\torch\\lib\\c10.dll\" "
                "or one of its dependencies.",
    "access": "ERROR: Could not install packages due to an OSError: [WinError 5] Access is denied: "
              "'C:\\Users\\ana\\AppData\\Local\\geossl\\venv-py3.12\\Scripts\\pip.exe'",
    "venv": "The virtual environment was not created successfully because ensurepip is not\navailable.  On "
            "Debian/Ubuntu systems, you need to install the python3-venv\npackage using the following command.",
    "cuda": "RuntimeError: CUDA error: no kernel image is available for execution on the device",
    "longpath": "OSError: [WinError 206] The filename or extension is too long",
}


@pytest.mark.parametrize("code", sorted(OUTPUTS))
def test_each_known_failure_gets_its_action(code: str) -> None:
    problem = classify(OUTPUTS[code])
    assert problem.code == code
    assert problem.message and problem.action
    assert problem.retry == (code == "network"), "only a network hiccup is worth retrying unchanged"


def test_actions_say_what_to_do() -> None:
    assert "Network" in classify(OUTPUTS["proxy"]).action
    assert "vc_redist" in classify(OUTPUTS["vcredist"]).action
    assert "python3-venv" in classify(OUTPUTS["venv"]).action
    assert "antivirus" in classify(OUTPUTS["access"]).action


def test_a_download_of_407_kb_is_not_a_proxy_error_and_unknown_text_is_generic() -> None:
    assert classify("Downloading tqdm-4.70.1-py3-none-any.whl (407 kB)\nKeyError: 'x'").code == "unknown"
    unknown = classify("Segmentation fault", "Install torch")
    assert unknown.code == "unknown" and "'Install torch'" in unknown.message and "diagnostics" in unknown.action


def test_scrub_removes_credentials() -> None:
    text = ("Using proxy http://ana:s3cret@proxy.corp:3128 and https://tok@repo.corp/simple "
            "Authorization: Bearer abc.def-123 token=XYZ789 {\"token\": \"qq\"}")
    clean = scrub(text)
    for secret in ("ana", "s3cret", "tok@", "abc.def-123", "XYZ789", "qq"):
        assert secret not in clean
    assert "http://***@proxy.corp:3128" in clean
    assert scrub("https://download.pytorch.org/whl/cpu") == "https://download.pytorch.org/whl/cpu"


def test_log_file_is_scrubbed_and_its_tail_readable(tmp_path: Path) -> None:
    log = tmp_path / "deep" / "setup.log"
    append(log, header("Install torch"))
    for i in range(50):
        append(log, f"line {i} via http://u:p@proxy:8080\n")
    assert "u:p@" not in log.read_text()
    assert tail(log, 3).splitlines() == [f"line {i} via http://***@proxy:8080" for i in (47, 48, 49)]
    assert tail(tmp_path / "missing.log") == ""
    append(tmp_path, "ignored")  # the log path is a folder: logged nowhere, no exception


def test_report_has_every_section_and_no_secrets() -> None:
    text = report(Facts(qgis_version="3.40.1-Bratislava", venv="/home/ana/.local/share/geossl/venv-py3.11",
                        venv_exists=True, base_python="/usr/bin/python3 (3.11.2)",
                        packages={"torch": "2.14.1+cu130", "geossl": "0.1.0"}, torch_build="CUDA (cu130)",
                        torch_reason="CUDA: NVIDIA H200, driver 580.95.05", probe='{"ok": true, "device": "cuda"}',
                        nvidia_smi="NVIDIA H200, 580.95.05, 9.0", log_tail="pip via http://ana:pw@proxy:3128",
                        problem="The disk is full."))
    for expected in ("# GeoSSL backend set-up: diagnostics", "- QGIS: 3.40.1-Bratislava", "(exists)",
                     "| torch | 2.14.1+cu130 |", "## Device probe", '"device": "cuda"', "## nvidia-smi",
                     "NVIDIA H200, 580.95.05, 9.0", "## Last lines of the set-up log", "- Problem: The disk is full.",
                     "- torch build: CUDA (cu130) — CUDA: NVIDIA H200"):
        assert expected in text
    assert "ana:pw" not in text and "http://***@proxy:3128" in text
    empty = report(Facts())
    assert "_(none recorded)_" in empty and "(not chosen)" in empty


def test_packages_are_read_from_the_venv_without_running_it(tmp_path: Path) -> None:
    from geossl_plugin.installer.diagnostics import venv_packages

    linux = tmp_path / "venv-py3.11" / "lib" / "python3.11" / "site-packages"
    for name in ("torch-2.14.1+cu130.dist-info", "segmentation_models_pytorch-0.6.0.dist-info", "geossl-0.1.0.dist-info"):
        (linux / name).mkdir(parents=True)
    (linux / "torch").mkdir()
    assert venv_packages(tmp_path / "venv-py3.11") == {
        "torch": "2.14.1+cu130", "segmentation-models-pytorch": "0.6.0", "geossl": "0.1.0"}
    windows = tmp_path / "venv-py3.12" / "Lib" / "site-packages"
    (windows / "numpy-2.4.6.dist-info").mkdir(parents=True)
    assert venv_packages(tmp_path / "venv-py3.12") == {"numpy": "2.4.6"}
    assert venv_packages(tmp_path / "missing") == {}
