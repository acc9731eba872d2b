"""Redaction of sensitive values in text, in time linear in the length of the text.

Python's `re` backtracks: a pattern such as `\\b[\\w.]+@[\\w.]+\\.[a-z]{2,}` takes quadratic
time on a long run of its characters (seconds on a 40 KB line, hours on a megabyte). Every
pattern here keeps to three rules under which a search is linear:

- it starts with a literal, or with a lookbehind that fails inside the run it would repeat,
  so a run is entered at its start only;
- every unbounded repeat is possessive (`++`, `*+`) and never gives characters back;
- everything else is bounded (`{4}`, `{1,3}`): a constant amount of work per position.

What a pattern cannot express (the Luhn and mod-97 checks, the number of groups of an IPv6
address) is checked in Python on each match, in time linear in the match.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

from whetstone_contract.config import RedactionKind

PLACEHOLDERS: dict[str, str] = {
    "secret": "[REDACTED_SECRET]",  # nosec B105 # the placeholder written over a secret
    "email": "[REDACTED_EMAIL]",
    "creditCard": "[REDACTED_CREDIT_CARD]",
    "iban": "[REDACTED_IBAN]",
    "ipAddress": "[REDACTED_IP]",
    "phone": "[REDACTED_PHONE]",
}

Span = tuple[int, int]

_DIGIT = re.compile(r"\d")


def _replace(text: str, spans: Iterable[Span], placeholder: str) -> tuple[str, int]:
    """`text` with each span (sorted, disjoint) replaced by `placeholder`; and how many."""
    parts: list[str] = []
    last = count = 0
    for start, end in spans:
        parts += (text[last:start], placeholder)
        last = end
        count += 1
    if not count:
        return text, 0
    parts.append(text[last:])
    return "".join(parts), count


def _merge(spans: Iterable[Span]) -> list[Span]:
    """Sorted spans with overlapping ones joined."""
    merged: list[Span] = []
    for start, end in sorted(spans):
        if merged and start < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


# --- secrets --------------------------------------------------------------------------------

# Secrets are ASCII. They are looked for in the text encoded as ASCII with one byte per
# character (anything else becomes '?'), so positions carry over, also to the lower-cased copy.


def _token(prefix: str, rest: str) -> re.Pattern[bytes]:
    """`prefix` where no word character precedes it, then `rest`. The literal comes first so
    that a search skips ahead to it rather than trying every position."""
    literal = re.escape(prefix)
    return re.compile(f"{literal}(?<!\\w{literal}){rest}".encode())


# Keys and tokens of common providers, as written.
_TOKENS = [
    _token("AKIA", r"[0-9A-Z]{16}\b"),  # AWS access key ids
    _token("ASIA", r"[0-9A-Z]{16}\b"),
    _token("gh", r"[pousr]_[A-Za-z0-9]{30,}+\b"),  # GitHub
    _token("github_pat_", r"[A-Za-z0-9_]{22,}+"),
    _token("glpat-", r"[A-Za-z0-9_-]{20,}+"),  # GitLab
    _token("sk-", r"(?:proj-|svcacct-|admin-|ant-)?[A-Za-z0-9_-]{20,}+"),  # OpenAI, Anthropic
    _token("sk_", r"(?:live|test)_[A-Za-z0-9]{16,}+\b"),  # Stripe
    _token("rk_", r"(?:live|test)_[A-Za-z0-9]{16,}+\b"),
    _token("xox", r"[abposr]-[A-Za-z0-9-]{10,}+"),  # Slack
    _token("xapp-", r"\d-[A-Za-z0-9-]{10,}+"),
    _token("AIza", r"[0-9A-Za-z_-]{35}"),  # Google
    _token("hf_", r"[A-Za-z0-9]{30,}+\b"),  # Hugging Face
    _token("npm_", r"[A-Za-z0-9]{36}\b"),
    # JWT; not after a '-' either, which `\w` would allow inside a run.
    re.compile(
        rb"eyJ(?<![A-Za-z0-9_-]eyJ)[A-Za-z0-9_-]{8,}+\.eyJ[A-Za-z0-9_-]{8,}+\.[A-Za-z0-9_-]{8,}+"
    ),
]
# In the lower-cased text; only the value (group `v`) is replaced.
_LOWER_TOKENS = [
    _token("bearer", r"\s++(?P<v>[a-z0-9._~+/-]{16,}+=*+)"),
    # key = value, also at the end of a longer name (aws_secret_access_key, DB_PASSWORD).
    re.compile(
        rb"(?:api[_-]?key|secret(?:[_-]?(?:access[_-]?)?key)?|token|password|passwd|pwd"
        rb"|access[_-]?key|private[_-]?key)"
        rb"[\"']?\s{0,3}[:=]\s{0,3}[\"']?(?P<v>[a-z0-9_\-/+=.]{8,}+)"
    ),
]
_PEM_BEGIN = re.compile(rb"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")
_PEM_END = re.compile(rb"-----END [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")
_PEM_BODY = re.compile(rb"[A-Za-z0-9+/=\s]*+")


def _pem_spans(text: bytes) -> list[Span]:
    """Private key blocks; one without its END line is replaced up to the end of its body."""
    spans: list[Span] = []
    pos = 0
    while (begin := _PEM_BEGIN.search(text, pos)) is not None:
        end = _PEM_END.search(text, begin.end())
        if end is None:
            # No END after this BEGIN means none after a later one: this block is the last.
            body = _PEM_BODY.match(text, begin.end())
            spans.append((begin.start(), body.end() if body else begin.end()))
            break
        spans.append((begin.start(), end.end()))
        pos = end.end()
    return spans


def _secret_spans(text: str) -> list[Span]:
    raw = text.encode("ascii", "replace")
    lower = raw.lower()
    found = _pem_spans(raw)
    for pattern in _TOKENS:
        found += (m.span() for m in pattern.finditer(raw))
    for pattern in _LOWER_TOKENS:
        found += (m.span("v") for m in pattern.finditer(lower))
    # One placeholder where matches overlap ("token=ghp_...").
    return _merge(found)


# --- e-mail ---------------------------------------------------------------------------------

# The local part is entered at the start of its run only. The domain is labels, each followed
# by a dot that another label follows, then a top-level label of two letters or more that no
# letter, digit or '_' follows ("alice@example.com." ends before the last dot).
_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[._%+-]*+"
    r"(?P<v>[A-Za-z0-9][A-Za-z0-9._%+-]*+@"
    r"(?:[A-Za-z0-9-]++\.(?=[A-Za-z0-9-]))++[A-Za-z]{2,}+)(?![A-Za-z0-9_])"
)


def _email_spans(text: str) -> list[Span]:
    if "@" not in text:
        return []
    return [m.span("v") for m in _EMAIL.finditer(text)]


# --- credit cards ---------------------------------------------------------------------------

# Card-shaped numbers that start with 2 to 6 (the card networks' major industry identifiers):
# 13 to 19 digits in one run, or in groups of four (the last shorter, or 4-4-4-4-3), or 4-6-5
# and 4-6-4 (American Express, Diners), one kind of separator throughout. The match is empty
# and the number a lookahead, so a card may also start at the next group of a number that
# failed the Luhn check.
_CARD = re.compile(
    r"(?<!\w)(?<!\d-)(?=(?P<v>[2-6](?:"
    r"\d{12,18}"
    r"|\d{3}([ -])\d{4}\2\d{4}\2(?:\d{4}\2\d{3}|\d{1,4})"
    r"|\d{3}([ -])\d{6}\3\d{4,5}"
    r"))(?!\w|-\d))"
)
# The digit sum of a doubled digit, as an ASCII digit (2 x 7 = 14 -> 5).
_LUHN_DOUBLED = bytes.maketrans(b"0123456789", b"0246813579")


@functools.lru_cache(maxsize=1024)
def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of a string of ASCII digits holds."""
    reverse = digits[::-1].encode()
    total = sum(reverse[0::2]) + sum(reverse[1::2].translate(_LUHN_DOUBLED))
    return (total - 48 * len(reverse)) % 10 == 0


def _card_spans(text: str) -> list[Span]:
    if not _DIGIT.search(text):
        return []
    spans: list[Span] = []
    last_end = 0
    for match in _CARD.finditer(text):
        start, end = match.span("v")
        number = match.group("v")
        if start >= last_end and luhn_ok(number.replace(" ", "").replace("-", "")):
            spans.append((start, end))
            last_end = end
    return spans


# --- IBAN -----------------------------------------------------------------------------------

# Two letters, two check digits, then 11 to 30 letters and digits: in one run, or in groups
# of four separated by single spaces (the last group may be shorter).
_IBAN = re.compile(
    r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}"
    r"(?:[A-Za-z0-9]{11,30}|(?: [A-Za-z0-9]{4}){2,7}(?: [A-Za-z0-9]{1,3})?)"
    r"(?![A-Za-z0-9])"
)


# Letters count as two digits in the mod-97 check: A = 10 ... Z = 35.
_IBAN_DIGITS = {ord(c): str(ord(c) - 55) for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"}


def _iban_length(candidate: str) -> int:
    """Length of the longest prefix of `candidate` that ends with a whole group and is an IBAN
    (15 to 34 characters, mod-97 check); 0 when there is none.

    A grouped IBAN may be followed by a four-letter word that the pattern took for a group.
    """
    upper = candidate.upper()
    # The country code and check digits go to the end of the number.
    tail = upper[:4].translate(_IBAN_DIGITS)
    best = 0
    end = 4
    length = 0
    digits = ""
    for group in upper[4:].split(" "):  # ["", "3704", ...] when grouped
        end += len(group)
        length += len(group)
        digits += group.translate(_IBAN_DIGITS)
        if 11 <= length <= 30 and int(digits + tail) % 97 == 1:
            best = end
        end += 1
    return best


def _iban_spans(text: str) -> list[Span]:
    if not _DIGIT.search(text):
        return []
    spans: list[Span] = []
    for match in _IBAN.finditer(text):
        length = _iban_length(match.group(0))
        if length:
            spans.append((match.start(), match.start() + length))
    return spans


def iban_ok(iban: str) -> bool:
    """`iban` (spaces allowed between groups of four) is an IBAN, whole."""
    return _IBAN.fullmatch(iban) is not None and _iban_length(iban) == len(iban)


# --- IP addresses ---------------------------------------------------------------------------

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_V4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_IPV4 = re.compile(rf"(?<![\w.]){_V4}(?![\w]|\.\d)")
_H = r"[0-9A-Fa-f]{1,4}"
# Eight groups, or six and an IPv4 address; or groups on either side of "::" (their number
# is checked in Python). Whatever follows may not continue the address.
_IPV6 = re.compile(
    rf"(?<![\w:.])(?:(?:{_H}:){{7}}{_H}|(?:{_H}:){{6}}{_V4}"
    rf"|(?:{_H}(?::{_H}){{0,6}})?::(?:(?:{_H}:){{0,5}}{_V4}|{_H}(?::{_H}){{0,6}})?)"
    r"(?![\w]|[:.][0-9A-Fa-f]|::)"
)


def _ipv6_ok(address: str) -> bool:
    """A "::" address has two to seven groups (an IPv4 address counts as two). Fewer than two
    ("::", "::1") are as likely code (a[::2]) as addresses and are kept."""
    head, compressed, tail = address.partition("::")
    if not compressed:
        return True
    groups = (head.count(":") + 1 if head else 0) + (tail.count(":") + 1 if tail else 0)
    return 2 <= groups + ("." in tail) <= 7


def _ip_spans(text: str) -> list[Span]:
    v6 = [m.span() for m in _IPV6.finditer(text) if _ipv6_ok(m.group(0))] if ":" in text else []
    v4 = [m.span() for m in _IPV4.finditer(text)] if "." in text else []
    # An IPv4 address inside an IPv6 one is part of that one.
    return _merge(v6 + v4) if v6 and v4 else v6 or v4


# --- phone numbers --------------------------------------------------------------------------

# Bounded quantifiers only: a constant amount of work per position.
_PHONE = re.compile(
    r"(?<![\w.+-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d[\d .-]{6,16}\d(?![\w])"
)
_DOTTED_QUAD = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _is_phone(candidate: str) -> bool:
    separators = sum(map(candidate.count, " .-()+"))
    digits = len(candidate) - separators
    if not 9 <= digits <= 15:
        return False
    if _DOTTED_QUAD.fullmatch(candidate) or _DATE.fullmatch(candidate):
        return False
    # A bare run of digits is more often an id than a phone number.
    return separators > 0


def _phone_spans(text: str) -> list[Span]:
    if not _DIGIT.search(text):
        return []
    return [m.span() for m in _PHONE.finditer(text) if _is_phone(m.group(0))]


# --- all kinds ------------------------------------------------------------------------------

# In this order: a secret may hold what looks like an address or a number; a card, an IBAN
# or an IP address what looks like a phone number.
_SCANNERS: dict[str, Callable[[str], list[Span]]] = {
    "secret": _secret_spans,
    "email": _email_spans,
    "creditCard": _card_spans,
    "iban": _iban_spans,
    "ipAddress": _ip_spans,
    "phone": _phone_spans,
}


def redact_text(text: str, kinds: Sequence[RedactionKind], counts: Counter[str]) -> str:
    """Replace each value of the given kinds by its placeholder, counting them by kind."""
    for kind, scan in _SCANNERS.items():
        if kind in kinds:
            text, n = _replace(text, scan(text), PLACEHOLDERS[kind])
            if n:
                counts[kind] += n
    return text
