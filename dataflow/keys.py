"""Key material given as text: an ASCII-armored block, or the base64 of one.

One decoder for every block that takes a key in its config (an SSH private key for SFTP, PGP
keys for decryption and output encryption), so ``${file:key.asc}``, a pasted armored block
and a one-line base64 secret (what secret stores hold best) all work the same way. Pure text:
no crypto library is loaded, so `dataflow validate` stays light; the library that uses the
key checks the rest when its block opens.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import struct

BEGIN = "-----BEGIN "


def armored(text: str, markers: tuple[str, ...]) -> str | None:
    """The armored text holding one of `markers` (``-----BEGIN ...`` lines), from `text` or
    from the base64 of it; None when neither holds one."""
    for candidate in _candidates(text):
        if any(marker in candidate for marker in markers):
            return candidate
    return None


def _candidates(text: str) -> list[str]:
    text = text.strip()
    found = [text]
    if BEGIN not in text:
        with contextlib.suppress(binascii.Error, UnicodeDecodeError, ValueError):
            found.append(base64.b64decode(text, validate=False).decode("utf-8").strip())
    return found


def armor_body(block: str, begin: str, end: str) -> bytes:
    """The bytes inside one armored block (headers and a PGP checksum line left out).
    Raises ValueError when the block is cut short or its base64 is damaged."""
    lines = [ln.strip() for ln in block[block.index(begin) :].splitlines()[1:]]
    if end not in lines:
        raise ValueError("has no END line (is it cut short?)")
    lines = lines[: lines.index(end)]
    if any(":" in ln for ln in lines) and "" in lines:  # armor headers end at a blank line
        lines = lines[lines.index("") + 1 :]
    body = "".join(ln for ln in lines if ln and not ln.startswith("=") and ":" not in ln)
    try:
        return base64.b64decode(body, validate=True)
    except binascii.Error:
        raise ValueError("is damaged (its base64 does not decode)") from None


OPENSSH_BEGIN = "-----BEGIN OPENSSH PRIVATE KEY-----"
OPENSSH_END = "-----END OPENSSH PRIVATE KEY-----"


def ssh_key_encrypted(block: str) -> bool:
    """Whether an OpenSSH or PEM private key block is protected by a passphrase."""
    if "ENCRYPTED" in block.split("\n", 2)[0] or "Proc-Type: 4,ENCRYPTED" in block:
        return True  # PKCS#8 "BEGIN ENCRYPTED PRIVATE KEY", or a legacy PEM header
    if OPENSSH_BEGIN not in block:
        return False
    data = armor_body(block, OPENSSH_BEGIN, OPENSSH_END)
    magic = b"openssh-key-v1\0"
    if not data.startswith(magic) or len(data) < len(magic) + 4:
        raise ValueError("is not an OpenSSH private key")
    (length,) = struct.unpack(">I", data[len(magic) : len(magic) + 4])
    cipher = data[len(magic) + 4 : len(magic) + 4 + length]
    return cipher != b"none"
