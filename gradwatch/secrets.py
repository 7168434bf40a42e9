"""Credentials in URIs: hidden before anything is written, uploaded, logged or printed.

    mask_uri("http://bob:PW@host:5000/x")  ->  "http://bob:***@host:5000/x"
    mask_uri("https://TOKEN@host")         ->  "https://***@host"
    mask_uri("cannot reach http://bob:p@s/s@host") -> "cannot reach http://bob:***@host"
    split_userinfo("http://bob:p@s@host/x") -> ("http://host/x", "bob", "p@s")

Credentials inside URIs are the common leak: MLflow accepts ``http://user:password@host`` and
``https://token@host`` tracking URIs, database URIs (``postgresql://user:pw@db/x``) and webhook
URLs carry them the same way. Only the userinfo is hidden; scheme, host and path stay readable
so a message still says which server it is about.

How a URI is read here (this module is the one place that reads userinfo, for masking and for
connecting alike, so what is hidden is exactly what is used as credentials):

- a URI starts at ``scheme://`` and runs to the next whitespace;
- its userinfo ends at the *last* ``@`` of that stretch: passwords typed raw with ``@``, ``/``,
  ``:``, ``%``, ``?`` or ``#`` are hidden whole. The price: an ``@`` in a path or query (write
  it ``%40``) is read as the end of a userinfo, so more than the secret is hidden;
- the user name ends at the first ``:``; without a ``:`` the whole userinfo is a token.

A secret holding whitespace cannot be told from the text around it and is not supported.
"""

from __future__ import annotations

import re
import urllib.parse

__all__ = ["REDACTED", "mask_uri", "split_userinfo"]

REDACTED = "***"

# A scheme, then everything up to whitespace (the URI and maybe text glued to it).
_URI = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<rest>\S*)")


def _parts(rest: str) -> tuple[str | None, str | None, str]:
    """``rest`` (what follows ``scheme://``) -> ``(user, password, host_and_after)``.

    ``user`` is None when there is no userinfo; ``password`` is None for a bare token (then
    ``user`` is the token).
    """
    info, at, after = rest.rpartition("@")
    if not at:
        return None, None, rest
    user, colon, password = info.partition(":")
    return user, (password if colon else None), after


def _mask_match(match: re.Match[str]) -> str:
    user, password, after = _parts(match.group("rest"))
    if user is None:
        return match.group(0)
    shown = REDACTED if password is None else f"{user}:{REDACTED}"
    return f"{match.group('scheme')}{shown}@{after}"


def mask_uri(uri: object) -> str:
    """``uri`` (or free text holding URIs: an error message, a log line) as text, with every
    password or token in a URI's userinfo replaced by ``***``.

        mask_uri("postgresql://mlflow:p@ss/w0rd@db:5432/x")  # 'postgresql://mlflow:***@db:5432/x'
    """
    return _URI.sub(_mask_match, str(uri))


def split_userinfo(uri: str) -> tuple[str, str | None, str | None]:
    """``(uri without its userinfo, user, password)``, percent-escapes in the credentials decoded.

        split_userinfo("https://alice:p%40ss@hooks.example/x")  # ("https://hooks.example/x",
                                                                #  "alice", "p@ss")

    A bare token (``https://TOKEN@host``) comes back as the user with ``password`` None; a URI
    without userinfo as ``(uri, None, None)``.
    """
    match = _URI.match(uri.strip())
    if match is None:
        return uri, None, None
    user, password, after = _parts(match.group("rest"))
    if user is None:
        return uri, None, None
    unquote = urllib.parse.unquote
    return (
        match.group("scheme") + after,
        unquote(user),
        None if password is None else unquote(password),
    )
