"""The history file is numbered when a command first asks for a number, not before the prompt appears.

Numbering parses every line of the file; parsed at start-up, 20,000 lines held the prompt back 1.4 s and 200,000
lines 13.5 s (audit of 2026-11-28), with the model's warm-up waiting for the interpreter as well.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from invoke_repl import session as session_module
from invoke_repl.repl import CommandHistory, run_interactive
from invoke_repl.session import Session

EARLIER = [
    "!dialect legacy",
    '"cat" -s 50 -S 7',  # a legacy line: -s is steps there, strength in guide
    "!history",  # never numbered
    "# a note",
    '"dog" -s 20',
]


def _session(dialect: str = "guide") -> Session:
    return Session(lambda: None, outdir=Path("unused"), out=io.StringIO(), err=io.StringIO(), dialect=dialect)


def _counting_parse(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real = session_module.parse

    def counting(line: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(line)
        return real(line, *args, **kwargs)

    monkeypatch.setattr(session_module, "parse", counting)
    return seen


def test_the_prompt_parses_no_history_line_before_a_command_needs_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "history"
    path.write_text("\n".join(EARLIER * 400) + "\n")
    parsed = _counting_parse(monkeypatch)
    session = _session()
    with create_pipe_input() as keys:
        keys.send_text("\x04")  # Ctrl-D at the first prompt
        status = run_interactive(session, CommandHistory(path, print), input=keys, output=DummyOutput())
    assert status == 0
    assert parsed == []  # it parsed all 2,000 lines first
    # numbered now, on first use; and the file ended in legacy, so this guide session's start says so (+1)
    assert len(session.history) == 3 * 400 + 1 and session.history[-1] == "!dialect guide"
    assert len(parsed) == 2000


def test_lazy_numbers_match_the_numbers_given_when_the_lines_were_typed() -> None:
    typed = _session()
    for line in EARLIER:
        typed.run_line(line)
    restarted = _session()
    restarted.add_earlier_history(EARLIER)
    assert restarted.history == typed.history == ["!dialect legacy", '"cat" -s 50 -S 7', '"dog" -s 20']


def test_lazy_numbering_reads_the_file_in_the_dialect_the_session_started_in() -> None:
    legacy_only = ['"cat" -s 50 -S 7', '"dog" -s 20']  # -s is steps in legacy; strength 50 is an error in guide
    session = _session("legacy")  # as `--dialect legacy` starts it
    session.add_earlier_history(legacy_only)
    session.run_line("!dialect guide")  # before the first !history: the file's lines keep their numbers
    session.run_line("!history")
    shown = session.out.getvalue()  # type: ignore[attr-defined]
    assert '[0] "cat" -s 50 -S 7\n[1] "dog" -s 20\n[2] !dialect guide\n' in shown


def test_recall_by_number_reaches_a_lazily_numbered_line() -> None:
    session = _session()
    session.add_earlier_history(EARLIER)
    outcome = session.run_line("!1")
    assert outcome.ok and outcome.edit == '"cat" -s 50 -S 7'


def _start(path: Path, dialect: str) -> tuple[Session, CommandHistory]:
    from invoke_repl.repl import restore_history

    session, history = _session(dialect), CommandHistory(path, print)
    restore_history(session, history)
    return session, history


def _type(session: Session, history: CommandHistory, lines: list[str]) -> None:
    """As the prompt does: prompt_toolkit writes each accepted line to the file, the session numbers it."""
    for line in lines:
        history.append_string(line)
        session.number_unrun(line)


@pytest.mark.parametrize(("first", "second"), [("legacy", "guide"), ("guide", "legacy"), ("legacy", "legacy")])
def test_numbers_survive_restarts_with_another_start_dialect(tmp_path: Path, first: str, second: str) -> None:
    """Lines typed after `--dialect legacy` were read at the next plain start as guide lines, where `-s10` is a
    strength of 10, an error, so they lost their numbers and `!1` named another line."""
    path = tmp_path / "history"
    typed = {"legacy": ['"x" -s10 -S5', '"y" -s10 -S6'], "guide": ['"z" -S10 --seed 7', '"w" -s0.5 -I a.png']}
    one, history = _start(path, first)
    _type(one, history, typed[first])
    two, history = _start(path, second)
    assert two.history[: len(one.history)] == one.history  # the first session's numbers, unchanged
    _type(two, history, typed[second])
    three, _ = _start(path, "guide")
    assert three.history[: len(two.history)] == two.history
    assert [line for line in three.history if not line.startswith("!dialect")] == typed[first] + typed[second]
    # Said only where the dialect changed: legacy first, or at the first legacy start; guide at the next plain one.
    assert [line for line in three.history if line.startswith("!dialect")] == ["!dialect legacy", "!dialect guide"]


def test_a_session_in_the_dialect_the_file_ends_in_adds_no_line(tmp_path: Path) -> None:
    path = tmp_path / "history"
    path.write_text('!dialect legacy\n"x" -s10 -S5\n')
    session, _ = _start(path, "legacy")
    assert session.history == ["!dialect legacy", '"x" -s10 -S5']
    assert path.read_text() == '!dialect legacy\n"x" -s10 -S5\n'
