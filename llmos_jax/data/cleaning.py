"""Text cleaning: the classic regex recipe, minus its habit of destroying text.

The classic recipe (lowercase, `re.sub("<.*?>", "")`, strip every non-word character, split on
whitespace) loses case and punctuation that a language model should learn, eats comparisons such
as "a < b and c > d", leaves entities like "&amp;" behind and flattens all layout. Here every step
is opt-in or conservative:

1. HTML: comments, `<script>`/`<style>` blocks and tags of *known* HTML elements are removed
   (block-level tags become line breaks so paragraphs survive); then entities are unescaped, after
   the tags, so that "&lt;b&gt;" ends up as the literal text "<b>" rather than being stripped.
2. URLs (http://, https://, www.) are removed, keeping the sentence punctuation that follows them.
3. Unicode NFKC: ligatures ("ﬁ" -> "fi"), full-width forms ("１２" -> "12"), non-breaking spaces.
4. Optional lowercasing and punctuation removal (off by default).
5. Whitespace: control and zero-width characters go, runs of spaces/tabs inside a line collapse to
   one space, trailing spaces go, leading indentation is kept (it is structure in code and lists),
   and blank-line runs collapse to one paragraph break "\\n\\n".
"""

from __future__ import annotations

import html
import re
import string
import unicodedata

# Known element names only: a general `<[a-z]...>` pattern would also eat "x<y and y>z".
_BLOCK_TAGS = (
    "address article aside blockquote br dd div dl dt fieldset figcaption figure footer form h1 h2 "
    "h3 h4 h5 h6 header hr li main nav ol p pre section table tbody td tfoot th thead tr ul"
).split()
_INLINE_TAGS = (
    "a abbr b bdi bdo big body caption center cite code col colgroup data del details dfn em font "
    "head html i iframe img input ins kbd label legend link mark meta noscript object option "
    "picture q s samp select small source span strike strong sub summary sup svg template "
    "textarea time title tt u var video wbr audio button canvas embed map area base"
).split()
_ATTRS = r"""(?:\s+[^\s"'<>/=]+(?:\s*=\s*(?:"[^"]*"|'[^']*'|[^\s"'=<>`]+))?)*\s*/?"""


def _tag_pattern(names: list[str]) -> re.Pattern[str]:
    # Longest names first so that "b" does not win over "br" or "blockquote".
    alternatives = "|".join(sorted(names, key=len, reverse=True))
    return re.compile(rf"</?(?:{alternatives})\b{_ATTRS}>", re.IGNORECASE)


_BLOCK_RE = _tag_pattern(_BLOCK_TAGS)
_INLINE_RE = _tag_pattern(_INLINE_TAGS)
_COMMENT_RE = re.compile(r"<!--.*?(?:-->|$)|<!DOCTYPE[^>]*>|<\?xml[^>]*\?>", re.DOTALL | re.I)
_RAW_BLOCK_RE = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>", re.DOTALL | re.IGNORECASE)

# A URL ends at whitespace, a quote or a bracket, and never on trailing sentence punctuation.
# Lowercase schemes only: re.IGNORECASE makes this scan 3x slower, and "HTTP://" is rare.
_URL_RE = re.compile(r"""(?:https?://|www\.)[^\s<>"'`]*[^\s<>"'`.,;:!?)\]}]""")

# Zero-width and byte-order characters that NFKC keeps but that carry no text.
# (A regex: str.translate with a dict was 10x slower on non-ASCII text.)
_INVISIBLE_RE = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u00ad]")
_LINE_SEPARATORS = re.compile(r"\r\n?|[\u2028\u2029\x0b\x0c\x85]")
# Category Cc except tab and newline (line separators are mapped to "\n" first).
_CONTROL_RE = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f]")
# Any other Unicode space (most become U+0020 under NFKC, but e.g. U+3000 does not always).
_OTHER_SPACE_RE = re.compile(r"[^\S\n\t ]")
_TRAILING_SPACE_RE = re.compile(r"[ \t]+$", re.MULTILINE)
# Runs after the first non-space of a line; leading indentation is handled separately.
_INNER_SPACE_RE = re.compile(r"(?<=\S)(?:[ \t]{2,}|\t)")
_INDENT_TAB_RE = re.compile(r"^[ \t]*\t[ \t]*", re.MULTILINE)
_BLANK_LINES_RE = re.compile(r"\n{3,}")


def remove_html(text: str) -> str:
    """Removes HTML markup (known tags, comments, scripts, styles) and unescapes entities."""
    if "<" in text:
        text = _RAW_BLOCK_RE.sub("", text)
        text = _COMMENT_RE.sub("", text)
        text = _BLOCK_RE.sub("\n", text)
        text = _INLINE_RE.sub("", text)
    if "&" in text:
        text = html.unescape(text)
    return text


def remove_urls(text: str) -> str:
    """Removes http(s):// and www. URLs, keeping the punctuation that follows them.

    The spaces before a URL go too ("see http://x." -> "see."), except a line's indentation.
    """
    pieces, last = [], 0
    for m in _URL_RE.finditer(text):
        if m.start() > 0 and text[m.start() - 1].isalnum():
            continue  # "awww.x" is not a URL.
        before = text[last : m.start()]
        stripped = before.rstrip(" \t")
        pieces.append(stripped if stripped and stripped[-1] != "\n" else before)
        last = m.end()
    pieces.append(text[last:])
    return "".join(pieces)


def _is_punctuation(ch: str) -> bool:
    # string.punctuation also holds ASCII symbols ($+<=>^`|~) that the classic recipe removes.
    return ch in string.punctuation or unicodedata.category(ch).startswith("P")


def _normalize_whitespace(text: str) -> str:
    # Regexes over the whole text: a per-line Python loop was 4x slower on the pydoc corpus.
    text = _LINE_SEPARATORS.sub("\n", text)
    text = _OTHER_SPACE_RE.sub(" ", _CONTROL_RE.sub("", text))
    text = _TRAILING_SPACE_RE.sub("", text)
    text = _INNER_SPACE_RE.sub(" ", text)
    if "\t" in text:
        text = _INDENT_TAB_RE.sub(lambda m: m.group().expandtabs(4), text)
    return _BLANK_LINES_RE.sub("\n\n", text.strip("\n"))


def clean_text(
    text: str,
    *,
    strip_html: bool = True,
    strip_urls: bool = True,
    lowercase: bool = False,
    strip_punctuation: bool = False,
) -> str:
    """Cleans one document; see the module docstring for each step and why.

    Args:
      text: Raw text, possibly with HTML markup.
      strip_html: Remove tags, comments, scripts and styles; unescape entities.
      strip_urls: Remove http(s):// and www. URLs.
      lowercase: Lowercase everything (off: case carries information).
      strip_punctuation: Delete punctuation and ASCII symbols (off: a LM should learn them).

    Returns:
      NFKC-normalised text with tidy whitespace, no leading/trailing blank lines.
    """
    # Strip markup before NFKC: NFKC maps full-width "＜" to "<", which must not start a tag.
    if strip_html:
        text = remove_html(text)
    text = _INVISIBLE_RE.sub("", unicodedata.normalize("NFKC", text))
    if strip_urls:
        text = remove_urls(text)
    if lowercase:
        text = text.lower()
    if strip_punctuation:
        text = "".join(ch for ch in text if not _is_punctuation(ch))
    return _normalize_whitespace(text)
