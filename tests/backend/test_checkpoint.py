import pickle

import pytest
import torch
from geossl.checkpoint import load_checkpoint, save_checkpoint
from geossl.errors import GeoSSLError


def test_round_trip_with_metadata(tmp_path):
    state = {"w": torch.arange(4.0)}
    save_checkpoint(tmp_path / "m.pt", "segmentation", state, classes={"names": ["a"]}, seed=3,
                    config={"lr": 1e-3, "rasters": ["x.tif"]}, metric=torch.tensor(0.5).item())
    ck = load_checkpoint(tmp_path / "m.pt", "segmentation")
    assert torch.equal(ck["state_dict"]["w"], state["w"])
    assert ck["seed"] == 3 and ck["config"]["rasters"] == ["x.tif"]
    assert ck["versions"]["torch"] == str(torch.__version__)
    assert list(tmp_path.iterdir()) == [tmp_path / "m.pt"]  # no temp file left


def test_wrong_kind_corrupt_and_foreign_files_are_refused(tmp_path):
    save_checkpoint(tmp_path / "p.pt", "pretrained", {"w": torch.zeros(1)})
    with pytest.raises(GeoSSLError, match="pretrained checkpoint, but a segmentation one"):
        load_checkpoint(tmp_path / "p.pt", "segmentation")
    data = (tmp_path / "p.pt").read_bytes()
    (tmp_path / "t.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(GeoSSLError, match="corrupt, truncated"):
        load_checkpoint(tmp_path / "t.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(GeoSSLError, match="not a GeoSSL model"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(GeoSSLError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


class Evil:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_pickled_code_is_never_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"format": "geossl", "kind": "segmentation", "x": Evil()}, fh)
    with pytest.raises(GeoSSLError):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "PWNED").exists()
