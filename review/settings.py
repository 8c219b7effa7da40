"""Settings of the review app: one frozen object built by `anomaly review`.

Footage is private. Without a token the app listens on loopback only; anything wider is refused
unless a bearer token (the service's, `$ANOMALY_API_TOKEN` or a token file) guards every page.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ReviewSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    run: Path = Field(description="run folder (or events JSON) under review")
    host: str = "127.0.0.1"
    port: int = Field(8800, ge=0, le=65535, description="0 picks a free port")
    auth_token: SecretStr | None = Field(None, description="bearer token every page and call needs")
    reviewer: str = Field("", max_length=200, description="name stored with verdicts when the page gives none")
    access_log: bool = False
    log_level: str = "warning"

    @model_validator(mode="after")
    def _private(self) -> ReviewSettings:
        if self.auth_token is None and not is_loopback(self.host):
            raise ValueError(
                f"refusing to serve footage on {self.host} without a token: set $ANOMALY_API_TOKEN or pass "
                "--token-file, or listen on 127.0.0.1"
            )
        return self

    @property
    def allowed_hosts(self) -> list[str]:
        """Host headers accepted: on loopback only loopback names (a DNS-rebinding page cannot reach the app)."""
        if is_loopback(self.host):
            return ["127.0.0.1", "localhost", "[::1]", "::1"]
        return ["*"]
