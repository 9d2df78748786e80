"""Secrets are read only from files other users cannot read, and never through a symlink."""

from __future__ import annotations

from pathlib import Path

import pytest

from retentiond.credentials import CredentialError, read_secret


def secret_file(tmp_path: Path, mode: int, text: str = "s3cret\n") -> Path:
    path = tmp_path / "secret"
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o400])
def test_private_and_group_readable_files_are_read(tmp_path: Path, mode: int) -> None:
    assert read_secret(secret_file(tmp_path, mode), "the password file") == "s3cret"


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o666])
def test_a_world_readable_file_is_refused_with_the_fix(tmp_path: Path, mode: int) -> None:
    path = secret_file(tmp_path, mode)
    with pytest.raises(CredentialError) as refused:
        read_secret(path, "the password file")
    assert f"chmod o-rwx {path}" in str(refused.value)
    assert "s3cret" not in str(refused.value)


def test_a_symlink_and_a_folder_are_refused(tmp_path: Path) -> None:
    target = secret_file(tmp_path, 0o600)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(CredentialError, match="symlink"):
        read_secret(link, "the password file")
    with pytest.raises(CredentialError, match="not a regular file"):
        read_secret(tmp_path, "the password file")


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(CredentialError, match="cannot read the password file"):
        read_secret(tmp_path / "nope", "the password file")
