"""Channel ids that are credentials, as logs may show them.

The web page's private channel id (`p-` and 192 random bits, see adapters/web_chat.py) is what its
holder proves ownership with: whoever reads it may read, clear and configure that conversation. So
a log line names such a channel by a short hash of its id instead, e.g. `web:p-…#a1b2c3d4`. The
hash is unsalted and stable, so an operator who is given an id can still find its lines
(`redact("web:" + id)`), while 32 bits of SHA-256 of 192 random bits give nothing back.
"""

from __future__ import annotations

import hashlib
import re

# A private id wherever it stands in a text (a channel key, a URL path, an error message): not
# preceded by an id character, so `p-` inside another id is not taken for one. Longer runs than
# the web adapter accepts are hidden too: hiding too much is harmless.
_PRIVATE_ID = re.compile(r"(?<![A-Za-z0-9_-])p-[A-Za-z0-9_-]{22,}")


def _hashed(match: re.Match[str]) -> str:
    digest = hashlib.sha256(match.group().encode()).hexdigest()[:8]
    return f"p-…#{digest}"


def redact(text: str) -> str:
    """`text` (a channel key, or any text that may contain one) with each private channel id
    replaced by `p-…#` and the first 8 hex digits of the id's SHA-256; other text unchanged."""
    return _PRIVATE_ID.sub(_hashed, text)
