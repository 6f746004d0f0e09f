"""`gcmae serve` on the command line: the defaults, the warning when listening beyond this machine, and the layer
rule that nothing in the package imports the viewer except the CLI."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from gcmae.cli import build_parser, main
from gcmae.serve.commands import is_loopback

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "gcmae"


def test_defaults_bind_to_this_machine_only():
    args = build_parser().parse_args(["serve", "runs/demo/tiles"])
    assert (args.host, args.port, args.job_dir) == ("127.0.0.1", 8000, "runs/demo/tiles")


@pytest.mark.parametrize("host, local", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                         ("127.0.1.1", True), ("0.0.0.0", False), ("::", False),
                                         ("192.168.1.5", False), ("example.org", False)])
def test_loopback_hosts(host, local):
    assert is_loopback(host) is local


@pytest.mark.parametrize("host, warned", [("0.0.0.0", True), ("127.0.0.1", False)])
def test_listening_on_the_network_prints_a_warning(tmp_path, monkeypatch, capsys, host, warned):
    import uvicorn

    runs = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: runs.append(kw))
    assert main(["serve", str(tmp_path), "--host", host, "--port", "8123"]) == 0
    out = capsys.readouterr()
    assert runs == [{"host": host, "port": 8123, "log_level": "warning"}]
    assert ("WARNING" in out.err and "no authentication" in out.err) is warned
    assert "http://127.0.0.1:8123/" in out.out


def test_a_missing_job_folder_fails_before_listening(tmp_path, monkeypatch, capsys):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("should not listen"))
    assert main(["serve", str(tmp_path / "nope")]) != 0
    assert "job folder not found" in capsys.readouterr().err


def test_only_the_cli_imports_the_viewer():
    importers = set()
    for path in PACKAGE.rglob("*.py"):
        if path.is_relative_to(PACKAGE / "serve"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) and node.module \
                else []
            if any(n == "gcmae.serve" or n.startswith("gcmae.serve.") for n in names):
                importers.add(path.relative_to(PACKAGE).as_posix())
    assert importers == {"cli.py"}


def test_the_viewer_imports_nothing_above_slide():
    above = {"train", "evaluate", "experiments", "cli", "demo"}
    for path in (PACKAGE / "serve").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gcmae."):
                assert node.module.split(".")[1] not in above, f"{path.name} imports {node.module}"
