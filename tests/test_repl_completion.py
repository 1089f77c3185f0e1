"""Tab completion offers what the word before the cursor asks for (pinned without a terminal)."""

from __future__ import annotations

from pathlib import Path

from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document

from invoke_repl.repl import InvokeCompleter, split_commands
from invoke_repl.session import Session


class _Manager:
    def model_names(self) -> list[str]:
        return ["embedded", "tiny-random", "my-sd15"]


def _session() -> Session:
    session = Session(_Manager, outdir=Path("unused"))
    session.manager  # noqa: B018 - create the stub manager so model names are known
    return session


def _complete(session: Session, text: str) -> list[str]:
    completer = InvokeCompleter(session)
    return [c.text for c in completer.get_completions(Document(text, len(text)), CompleteEvent(True))]


def test_sampler_names_after_dash_a_attached_separate_and_long() -> None:
    session = _session()
    for text in ('"x" -A k_', '"x" -Ak_', '"x" --sampler k_', '"x" --sampler=k_'):
        offered = _complete(session, text)
        assert "k_lms" in offered and "k_euler_a" in offered and "ddim" not in offered, text


def test_bang_commands_and_switches() -> None:
    session = _session()
    assert "!switch" in _complete(session, "!sw")
    assert "--strength" in _complete(session, '"x" --str')


def test_model_names_after_model_switch_and_bang_switch() -> None:
    session = _session()
    assert _complete(session, '"x" --model my') == ["my-sd15"]
    assert set(_complete(session, "!switch ")) == {"embedded", "tiny-random", "my-sd15"}


def test_image_paths_after_init_img(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fire-drawing.png").write_bytes(b"")
    (tmp_path / "other.txt").write_bytes(b"")
    offered = _complete(_session(), '"x" -I fire')
    assert offered == ["-drawing.png"]  # PathCompleter completes the rest of the name


def test_seeds_used_in_this_session_newest_first() -> None:
    session = _session()
    session.seeds_used.extend([5, 1592514025, 5])
    assert _complete(session, '"x" --seed ') == ["5", "1592514025"]


def test_pasted_block_splits_into_lines() -> None:
    assert split_commands('"a" -S5\r\ninvoke> "b" -S6\r"c"') == ['"a" -S5', 'invoke> "b" -S6', '"c"']


def test_paths_with_spaces_complete_quoted_and_go_on_inside_the_quotes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my dir").mkdir()
    (tmp_path / "my dir" / "fire drawing.png").write_bytes(b"")
    session = _session()
    assert _complete(session, '"x" -S2 -I my') == ['"my dir/']  # a folder: the quote stays open
    assert _complete(session, '"x" -S2 -I "my dir/fi') == ['"my dir/fire drawing.png"']
    assert _complete(session, '!fetch "my dir/') == ['"my dir/fire drawing.png"']
    assert _complete(session, "a dog's life -I my") == ['"my dir/']  # an apostrophe inside a word opens nothing
    # What the completion makes is a line the parser reads back with the whole path as the init image.
    from invoke_repl.commands import parse

    assert parse('"x" -S2 -I "my dir/fire drawing.png"').init_img == "my dir/fire drawing.png"
    # Inside a typographic quote the completion closes with its partner, and the line still reads back.
    assert _complete(session, '"x" -S2 -I \u201cmy dir/fi') == ["\u201cmy dir/fire drawing.png\u201d"]
    assert parse('"x" -S2 -I \u201cmy dir/fire drawing.png\u201d').init_img == "my dir/fire drawing.png"


def _typed_ahead(keys_text: str) -> list[str]:
    """The lines the REPL runs when `keys_text` arrives in one burst, as keys typed during a generation do."""
    import io

    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    from invoke_repl.repl import CommandHistory, run_interactive
    from invoke_repl.session import Outcome

    ran: list[str] = []

    class Recording(Session):
        def run_line(self, line: str) -> Outcome:
            ran.append(line)
            return Outcome()

    session = Recording(_Manager, outdir=Path("unused"), out=io.StringIO(), err=io.StringIO())
    with create_pipe_input() as keys:
        keys.send_text(keys_text + "\x04")
        assert run_interactive(session, CommandHistory(None, print), input=keys, output=DummyOutput()) == 0
    return ran


def test_tab_then_enter_in_one_burst_runs_the_completed_line(tmp_path: Path, monkeypatch) -> None:
    """prompt_toolkit completed in a task after the Enter: the screen showed `-A k_euler`, the line ran `k_eul`."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "with space.png").write_bytes(b"")
    assert _typed_ahead('"x" -A k_lm\t\r') == ['"x" -A k_lms']  # one completion: inserted
    assert _typed_ahead('"x" -A k_eul\t\r') == ['"x" -A k_euler']  # k_euler, k_euler_a: their common start
    assert _typed_ahead('"x" -I with\t\r') == ['"x" -I "with space.png"']
