import csv
import os
import stat

import pytest
import torch
from safetensors.torch import save_file

from gcmae.io.atomic import atomic_path, write_csv_atomic


def test_csv_fields_with_commas_quotes_and_newlines_read_back(tmp_path):
    rows = [["a,b", 'say "hi"', 1.5], ["line\nbreak", "", 2]]
    path = write_csv_atomic(tmp_path / "sub" / "t.csv", ["name", "note", "value"], rows)
    with open(path, newline="") as fh:
        back = list(csv.reader(fh))
    assert back == [["name", "note", "value"], ["a,b", 'say "hi"', "1.5"], ["line\nbreak", "", "2"]]
    assert [p.name for p in path.parent.iterdir()] == ["t.csv"]


def test_a_failing_row_source_leaves_the_old_file_untouched(tmp_path):
    path = write_csv_atomic(tmp_path / "t.csv", ["x"], [[1]])
    before = path.read_bytes()

    def rows():
        yield [2]
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        write_csv_atomic(path, ["x"], rows())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]


def test_atomic_files_get_the_umask_permissions_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "w.safetensors") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp))
            os.chmod(tmp, 0o600)  # what some writers do
        assert stat.S_IMODE((tmp_path / "w.safetensors").stat().st_mode) == 0o644
        os.chmod(tmp_path / "w.safetensors", 0o600)  # a file the user made private stays private when rewritten
        with atomic_path(tmp_path / "w.safetensors") as tmp:
            save_file({"w": torch.ones(2)}, str(tmp))
        assert stat.S_IMODE((tmp_path / "w.safetensors").stat().st_mode) == 0o600
    finally:
        os.umask(old)
