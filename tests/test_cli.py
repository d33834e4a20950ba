import json
import subprocess
import sys

from mri_slice_transfer import __version__
from mri_slice_transfer.cli import main


def test_version_flag(capsys):
    try:
        main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert __version__ in capsys.readouterr().out


def test_info_json(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MRI_SLICE_TRANSFER_CACHE", str(tmp_path))
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["mri_slice_transfer"] == __version__
    assert info["paths"]["cache_dir"] == str(tmp_path)
    assert info["packages"]["torch"] != "not installed"


def test_python_dash_m_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "mri_slice_transfer", "info"], capture_output=True, text=True, check=True
    ).stdout
    assert "weights" in out and "cache" in out
