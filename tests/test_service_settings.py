"""Settings and the bearer token: read at the edge, from a file or an environment variable, never silently empty."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from service.auth import token_matches
from service.settings import BatchSettings, ServiceSettings, read_auth_token


def test_token_from_the_environment_or_a_file(tmp_path: Path) -> None:
    assert read_auth_token("TOKEN", None, {}) is None
    assert read_auth_token("TOKEN", None, {"TOKEN": " abc \n"}).get_secret_value() == "abc"
    f = tmp_path / "token"
    f.write_text("from-file\n")
    assert read_auth_token("TOKEN", f, {}).get_secret_value() == "from-file"


@pytest.mark.parametrize(
    ("environ", "file_text", "message"),
    [({"TOKEN": "  "}, None, "set but empty"), ({}, "\n", "is empty"), ({"TOKEN": "a"}, "b", "only one")],
)
def test_ambiguous_or_empty_tokens_are_errors(tmp_path: Path, environ, file_text, message) -> None:  # noqa: ANN001
    f = None
    if file_text is not None:
        f = tmp_path / "token"
        f.write_text(file_text)
    with pytest.raises(ValueError, match=message):
        read_auth_token("TOKEN", f, environ)


def test_token_comparison() -> None:
    secret = SecretStr("correct horse")
    assert token_matches("correct horse", secret)
    assert not token_matches("correct hors", secret)
    assert not token_matches("", secret)


def test_settings_are_validated_and_keep_the_token_out_of_their_repr(tmp_path: Path) -> None:
    s = ServiceSettings(model_path=tmp_path / "m.pt", auth_token=SecretStr("hunter2"))
    assert "hunter2" not in repr(s)
    with pytest.raises(ValidationError):
        BatchSettings(queue_size=0)
    with pytest.raises(ValidationError):
        ServiceSettings(model_path=tmp_path / "m.pt", port=70000)
    with pytest.raises(ValidationError):
        ServiceSettings(model_path=tmp_path / "m.pt", unknown=1)
