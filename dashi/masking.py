"""Masking secrets for display: broker URLs with their password replaced by ``***``.

Kept free of kombu, so that the settings (and everything that only reads them)
can mask a URL without loading a broker library.
"""

from __future__ import annotations

import re

__all__ = ["mask_uri"]

_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][\w+.-]*://)(?P<user>[^:@/]*)(?::[^@/]*)?@")


def mask_uri(uri: str) -> str:
    """Return ``uri`` with any password replaced by ``***``."""
    return _CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", uri)
