"""Masking of secrets before anything is written, uploaded, logged or printed.

    mask_uri("http://bob:PW@host:5000/x")  ->  "http://bob:***@host:5000/x"
    mask_uri("https://TOKEN@host")         ->  "https://***@host"
    mask_uri("cannot reach http://bob:PW@host") -> "cannot reach http://bob:***@host"

Credentials inside URIs are the common leak: MLflow accepts ``http://user:password@host`` and
``https://token@host`` tracking URIs, and database URIs (``postgresql://user:pw@db/x``) carry
passwords the same way. Only the userinfo part is hidden; scheme, host and path stay readable
so an error message still says which server it is about.
"""

from __future__ import annotations

import re

__all__ = ["REDACTED", "mask_uri"]

REDACTED = "***"

# scheme://userinfo@ where userinfo has no '/', '@' or whitespace. With a ':' the user name is
# kept and the password hidden; without one the whole userinfo is a token and is hidden.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<info>[^/@\s]+)@")


def _mask_match(match: re.Match[str]) -> str:
    info = match.group("info")
    user, sep, _secret = info.partition(":")
    masked = f"{user}:{REDACTED}" if sep else REDACTED
    return f"{match.group('scheme')}{masked}@"


def mask_uri(uri: object) -> str:
    """``uri`` (or free text holding URIs: an error message, a log line) as text, with every
    password or token in a URI's userinfo replaced by ``***``."""
    return _USERINFO.sub(_mask_match, str(uri))
