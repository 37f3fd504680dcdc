"""Issue 18 item 8: a test run that changes no interop result leaves README.md and MATRIX.md untouched."""

from __future__ import annotations

from pathlib import Path

from conftest import MATRIX_END, MATRIX_START, write_matrix

BODY = "**Linux 6.1**\n\n| configuration | result |\n|---|---|\n| gre key | pass |\n"


def _files(tmp_path: Path) -> tuple[Path, Path]:
    matrix, readme = tmp_path / "MATRIX.md", tmp_path / "README.md"
    readme.write_text(f"# r\n\n{MATRIX_START}\nold\n{MATRIX_END}\n\nafter\n")
    return matrix, readme


def test_an_unchanged_matrix_is_not_rewritten_even_a_minute_later(tmp_path: Path) -> None:
    matrix, readme = _files(tmp_path)
    assert write_matrix(BODY, matrix, readme, force=False)  # first run: nothing there yet
    first_matrix, first_readme = matrix.read_text(), readme.read_text()
    matrix.write_text(first_matrix.replace("UTC", "UTC "))  # as if the date line were from another run
    stamped = matrix.read_text()
    assert not write_matrix(BODY, matrix, readme, force=False)
    assert matrix.read_text() == stamped and readme.read_text() == first_readme
    assert BODY.strip() in first_readme and "after" in first_readme


def test_a_changed_result_or_a_request_rewrites_both(tmp_path: Path) -> None:
    matrix, readme = _files(tmp_path)
    write_matrix(BODY, matrix, readme, force=False)
    changed = BODY.replace("pass", "FAIL")
    assert write_matrix(changed, matrix, readme, force=False)
    assert "FAIL" in matrix.read_text() and "FAIL" in readme.read_text()
    assert write_matrix(changed, matrix, readme, force=True)  # USERTUNNEL_WRITE_MATRIX=1
