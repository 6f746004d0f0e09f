"""rewrite_shared_csv: read under the lock, update, write back sorted; no lock left behind."""
from pathlib import Path

from gcmae.io.shared_csv import rewrite_shared_csv


def test_rows_are_updated_sorted_and_keyless_rows_dropped(tmp_path: Path) -> None:
    path = tmp_path / "failures.csv"
    path.write_text("slide,reason\nb,old b\n,no key\na,old a\nc,\n")
    seen = []

    def update(rows: dict[str, str]) -> dict[str, str]:
        seen.append(dict(rows))
        return {**{k: v for k, v in rows.items() if k != "a"}, "aa": "new, with a comma"}

    rewrite_shared_csv(path, ("slide", "reason"), update)
    assert seen == [{"b": "old b", "a": "old a", "c": ""}]
    assert path.read_text() == 'slide,reason\naa,"new, with a comma"\nb,old b\nc,\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["failures.csv"]


def test_a_missing_file_starts_empty(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    rewrite_shared_csv(path, ("path", "reason"), lambda rows: {**rows, "x.svs": "unreadable"})
    assert path.read_text() == "path,reason\nx.svs,unreadable\n"
