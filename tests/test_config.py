"""config.first_line: the one cut of an error to its first line, used wherever an error becomes a tag or a log line."""

from __future__ import annotations

from morphogen_exp.config import first_line


def test_first_line_is_the_first_non_blank_line_cut_at_the_limit() -> None:
    assert first_line(ValueError("\n  bad value\nTraceback: more")) == "bad value"
    assert first_line(ValueError("x" * 400)) == "x" * 300
    assert first_line(ValueError("x" * 400), 200) == "x" * 200


def test_an_error_that_says_nothing_is_named_by_its_type() -> None:
    assert first_line(KeyboardInterrupt()) == "KeyboardInterrupt"
    assert first_line(RuntimeError("  \n ")) == "RuntimeError"
