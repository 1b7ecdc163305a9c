"""errors.cli_errors: the one tail of every command-line tool (history, report, compare): a user's error or an
OSError is one line on stderr and exit 2, and a bug keeps its traceback."""

from __future__ import annotations

import errno

import pandas as pd
import pytest

from morphogen_exp import compare, history
from morphogen_exp.errors import ConfigError, cli_errors


def test_a_config_error_and_an_oserror_are_one_line_and_status_2(capsys) -> None:
    with cli_errors() as cli:
        raise ConfigError("--q 0: must be >= 1")
    assert cli.status == 2 and capsys.readouterr().err == "error: --q 0: must be >= 1\n"
    with cli_errors() as cli:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/matrix.csv")
    assert cli.status == 2 and capsys.readouterr().err == "error: /x/matrix.csv: No such file or directory\n"
    with cli_errors() as cli:
        raise OSError(errno.ENOSPC, "No space left on device")  # no file named: no empty "error: : ..."
    assert capsys.readouterr().err == "error: No space left on device\n"
    with cli_errors() as cli:
        pass
    assert cli.status == 0 and capsys.readouterr().err == ""


def test_only_the_named_user_errors_are_caught_and_a_bug_propagates() -> None:
    with pytest.raises(ValueError, match="a bug"), cli_errors():
        raise ValueError("a bug")  # ConfigError is a ValueError, not the other way round
    with cli_errors(ValueError) as cli:  # compare's own errors are plain ValueErrors
        raise ValueError("not a matrix")
    assert cli.status == 2
    with pytest.raises(KeyError), cli_errors(ValueError):
        raise KeyError("q")


def test_the_tools_print_an_oserror_as_file_and_reason(tmp_path, capsys) -> None:
    csv = tmp_path / "m.csv"
    pd.DataFrame([{"strategy": "x", "q": 1, "batch_qps": 1.0}]).to_csv(csv, index=False)
    (tmp_path / "out.md").mkdir()  # --out is a folder: writing it is an OSError
    assert compare.main([str(csv), str(csv), "--out", str(tmp_path / "out.md")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'out.md'}: Is a directory\n"
    assert history.main(["--config", "x", "--q", "0"]) == 2
    assert capsys.readouterr().err == "error: --q 0 / --last None: both must be >= 1\n"
