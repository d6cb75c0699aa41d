"""The one place passwords are taken out of text before simstream prints or logs it.

Every URL (Redis or database) that reaches an error message, a log line, a report or a label
goes through :func:`mask_secrets`, and so do the CLI's error lines and every log line its
formatters write, as a second guard for messages that quote a URL simstream did not build.
"""

from __future__ import annotations

import re

MASK = "***"

# scheme://user:password@host — the password runs to the last "@" of the word, as both
# urllib (redis-py) and SQLAlchemy read a URL whose password holds a raw "@".
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s/?#@:]*:)(?P<secret>\S*)(?=@)")
# ?password=..., &passwd=..., libpq's "password=..." and redis-py's ssl_password=...
_PARAMETER = re.compile(r"(?P<head>(?<![A-Za-z0-9])(?:ssl_)?(?:password|passwd|pwd)\s*=\s*)(?P<secret>[^\s&#;,'\"]*)",
                        re.IGNORECASE)


def mask_secrets(text: object) -> str:
    """``text`` (a URL, a message, anything with a ``str``) with every password replaced by ``***``.

    Guarantees: the password of any ``scheme://user:password@host`` in it, and the value of any
    ``password=`` / ``passwd=`` / ``pwd=`` / ``ssl_password=`` parameter (query string or libpq
    key=value), no longer appears; user names, hosts, ports, paths and other parameters are kept,
    so the result still says which server was meant. Masking is idempotent and never raises.
    """
    masked = _USERINFO.sub(lambda m: m["head"] + (MASK if m["secret"] else ""), str(text))
    return _PARAMETER.sub(lambda m: m["head"] + (MASK if m["secret"] else ""), masked)
