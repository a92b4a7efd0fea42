"""A bad config stops a command before any work, with a message that names the key or option."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from webly.cli import main


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data.subsett=2", ["data.subsett", "did you mean 'data.subset'?"]),
        ("optim.lrr=0.2", ["optim.lrr", "did you mean 'optim.lr'?"]),
        ("train.steps=many", ["train.steps", "could not be converted to Integer"]),
        ("model=resnet5", ["model/resnet5", "resnet50"]),
        ("head.name=cosine", ["head.name='cosine'", "sigmoid, softmax"]),
        ("train.batch_size=0", ["train.batch_size=0", "must be positive"]),
    ],
)
def test_bad_override_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                    override: str, expected: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("webly pretrain: config error:")
    for fragment in expected:
        assert fragment in err
    assert list(tmp_path.iterdir()) == []  # nothing was started: no data, no runs, no job folder


def test_console_script_reports_misspelt_key(tmp_path: Path) -> None:
    webly = Path(sys.executable).with_name("webly")
    done = subprocess.run([str(webly), "synth", "data.synth.noize=0.3"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert "data.synth.noize" in done.stderr and "data.synth.noise" in done.stderr
    assert list(tmp_path.iterdir()) == []
