"""ecgfast-train's --out on a filesystem that refuses writes: a one-line error and exit 2, never a traceback.

(Permission bits cannot make a folder unwritable for root, who runs the tests here: the refusal is simulated at
the call that creates the run folder, with the error a read-only filesystem gives.)"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from ecgfast.pretrain import cli


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ECGFAST_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def test_a_read_only_out_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    out = tmp_path / "ro" / "run"
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self == out or out.is_relative_to(self) and self != tmp_path and tmp_path in self.parents:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    code = cli.main(["--synthetic-patients", "40", "--batch-size", "8", "--workers", "0", "--max-steps", "1",
                     "--no-progress", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("ecgfast-train: error:") and "Read-only file system" in err, err
    assert err.count("\n") == 1
