"""Reading the coordinator's HTTP API from the ``gpuwarden`` command."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class ApiUnreachable(RuntimeError):
    pass


class NotFound(ApiUnreachable):
    """The API answered 404: what was asked for does not exist (a node name, most often)."""


def fetch(base_url: str, path: str, timeout_s: float = 5.0) -> Any:
    url = base_url.rstrip("/") + path
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")[:200]
        if exc.code == 404:
            raise NotFound(body or f"{url} answered 404") from None
        raise ApiUnreachable(
            f"{url} answered {exc.code}: {body}; the coordinator's log says more"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        raise ApiUnreachable(
            f"cannot reach the coordinator at {base_url} ({exc}); is it running? "
            "Point --api (or GPUWARDEN_API) at its --http address"
        ) from None
