"""`tracker stats | head`, `tracker order ... --json | head`: the reader leaves early, and
the command's next write meets a closed pipe. It used to end in a BrokenPipeError
traceback on the terminal; now it ends quietly with 141 (128 + SIGPIPE), as `yes | head`
does."""

from __future__ import annotations

import argparse
import io

import pytest

from tracker.cli import main as cli


class ClosedPipe(io.TextIOBase):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def fileno(self) -> int:
        raise io.UnsupportedOperation("no file descriptor")


def test_a_reader_that_leaves_early_ends_the_command_quietly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def long_listing(args: argparse.Namespace) -> int:
        for line in range(1000):
            print(f"order {line}")
        return 0

    parser = argparse.ArgumentParser(prog="tracker")
    parser.set_defaults(handler=long_listing, verbose=False)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    with capsys.disabled():
        monkeypatch.setattr("sys.stdout", ClosedPipe())
        code = cli.main([])
    assert code == 141
