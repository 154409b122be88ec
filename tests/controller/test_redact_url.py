"""URLs as logs and start-up errors show them: no secret survives, whichever way the URL
carries it (libpq and NATS accept several)."""

from __future__ import annotations

import pytest

from tether.controller.services.replica import redact_url


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://tether:s3cret@db:5432/tether",
     "postgresql://tether:***@db:5432/tether"),
    ("postgresql://db/tether?user=tether&password=s3cret&sslmode=require",
     "postgresql://db/tether?user=tether&password=***&sslmode=require"),
    ("postgresql://db/tether?sslpassword=s3cret", "postgresql://db/tether?sslpassword=***"),
    ("postgresql://db/tether?PASSWORD=s3cret", "postgresql://db/tether?PASSWORD=***"),
    ("postgresql://u:s3cret@db/t?password=s3cret", "postgresql://u:***@db/t?password=***"),
    ("nats://s3cret@nats-1:4222", "nats://***@nats-1:4222"),
    ("tls://s3cret@nats-1:4222", "tls://***@nats-1:4222"),
    ("nats://user:s3cret@a:4222,nats://s3cret@b:4222",
     "nats://user:***@a:4222,nats://***@b:4222"),
    ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
    ("postgresql://db/tether", "postgresql://db/tether"),
    ("postgresql://u:p@[::1/x", "<unparsable url>"),
])
def test_no_secret_is_shown(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "s3cret" not in redact_url(url)
