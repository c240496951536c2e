"""ChatGPT's page HTML as markdown.

Raw ShareGPT dumps (``RyokoAI/ShareGPT52K`` and its copies) keep each answer as the
HTML of the shared page: ``<div class="markdown prose ..."><p>...</p><pre>...<button>Copy
code</button>...<code class="language-python">...</code></pre></div>``. A draft trained
on that learns tags its target never writes. :func:`html_to_markdown` turns it back into
the markdown the model wrote (paragraphs, headings, lists, fenced code with its language,
tables, emphasis), dropping the page's buttons and icons; the standard library's HTML
parser is enough for this regular markup.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

#: Page furniture whose text is not part of the answer ("Copy code", icons).
_SKIP = frozenset({"button", "svg", "script", "style"})
_BLOCKS = frozenset({"p", "div", "blockquote", "table", "section", "article"})
_HEADINGS = {f"h{i}": i for i in range(1, 7)}
#: Inline tags and their markdown, the same on both sides.
_INLINE = {"strong": "**", "b": "**", "em": "*", "i": "*", "code": "`"}


#: How the page wraps every answer: ``<div class="markdown prose ...">`` (or
#: ``"request-:r0:-0 markdown prose ..."``).
_PAGE = re.compile(r"""\s*<div\b[^>]*\bclass=["'][^"']*\bmarkdown\b""")


def looks_like_html(text: str) -> bool:
    """True for an answer wrapped as the page wraps it; not for an answer that is HTML
    the model wrote (a web page it was asked for), nor for prose mentioning a tag."""
    return _PAGE.match(text) is not None


def html_to_markdown(text: str) -> str:
    """The markdown of one message of ChatGPT page HTML."""
    parser = _Markdown()
    parser.feed(text)
    parser.close()
    return parser.markdown()


class _Markdown(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.lists: list[list] = []  # [tag, items so far] per open list
        self.skip = 0  # depth inside _SKIP tags
        self.pre: dict | None = None  # the open <pre>: its code text, other text, language
        self.cells: list[str] | None = None  # the open table row's cells
        self.cell: list[str] | None = None
        self.rows = 0

    # ------------------------------------------------------------------ output
    def write(self, text: str) -> None:
        (self.cell if self.cell is not None else self.out).append(text)

    def _tail(self) -> str:
        return "".join(self.out[-3:])

    def block(self) -> None:
        """Start a new paragraph."""
        if self.cell is None:
            self.out.append("\n\n")

    def line(self) -> None:
        if self.cell is None:
            self.out.append("\n")

    def markdown(self) -> str:
        text = "".join(self.out)
        text = "\n".join(line.rstrip() for line in text.split("\n"))
        return re.sub(r"\n{3,}", "\n\n", text).strip("\n").strip()

    # ------------------------------------------------------------------ parser events
    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in _SKIP:
            self.skip += 1
            return
        if self.skip:
            return
        if self.pre is not None:
            if tag == "code":
                self.pre["in_code"] = True
                self.pre["seen_code"] = True
                classes = (dict(attrs).get("class") or "").split()
                self.pre["lang"] = next((c[len("language-"):] for c in classes if c.startswith("language-")), "")
            return
        if tag == "pre":
            self.block()
            self.pre = {"code": [], "other": [], "lang": "", "in_code": False, "seen_code": False}
        elif tag in _HEADINGS:
            self.block()
            self.write("#" * _HEADINGS[tag] + " ")
        elif tag in ("ul", "ol"):
            if not self.lists:
                self.block()
            self.lists.append([tag, 0])
        elif tag == "li":
            self.line()
            depth = max(len(self.lists), 1)
            kind = self.lists[-1] if self.lists else ["ul", 0]
            kind[1] += 1
            marker = f"{kind[1]}. " if kind[0] == "ol" else "- "
            self.write("   " * (depth - 1) + marker)
        elif tag == "tr":
            self.cells = []
        elif tag in ("td", "th"):
            self.cell = []
        elif tag in ("p", "div") and self.lists:  # a paragraph in a list item stays in the item
            if not self._tail().endswith(("- ", ". ")):
                self.line()
                self.write("   " * len(self.lists))
        elif tag in _BLOCKS:
            if tag == "table":
                self.rows = 0
            self.block()
        elif tag == "br":
            self.write("\n")
        elif tag == "hr":
            self.block()
            self.write("---")
            self.block()
        elif tag in _INLINE:
            self.write(_INLINE[tag])

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skip = max(self.skip - 1, 0)
            return
        if self.skip:
            return
        if self.pre is not None:
            if tag == "code":
                self.pre["in_code"] = False
            elif tag == "pre":
                pre, self.pre = self.pre, None
                body = "".join(pre["code"] if pre["seen_code"] else pre["other"]).strip("\n")
                self.write(f"```{pre['lang']}\n{body}\n```")
                self.block()
            return
        if tag in ("p", "div") and self.lists:
            pass
        elif tag in _HEADINGS or tag in _BLOCKS:
            self.block()
        elif tag in ("ul", "ol"):
            if self.lists:
                self.lists.pop()
            if not self.lists:
                self.block()
        elif tag in ("td", "th") and self.cell is not None:
            text = re.sub(r"\s+", " ", "".join(self.cell)).strip().replace("|", "\\|")
            self.cell = None
            if self.cells is not None:
                self.cells.append(text)
        elif tag == "tr" and self.cells is not None:
            cells, self.cells = self.cells, None
            self.line()
            self.write("| " + " | ".join(cells) + " |")
            if self.rows == 0:
                self.line()
                self.write("| " + " | ".join("---" for _ in cells) + " |")
            self.rows += 1
        elif tag in _INLINE:
            self.write(_INLINE[tag])

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        if self.pre is not None:
            self.pre["code" if self.pre["in_code"] else "other"].append(data)
            return
        text = re.sub(r"\s+", " ", data)
        if not text.strip():
            tail = self._tail()
            if not tail or tail.endswith(("\n", " ")):
                return
        if self.cell is None and (not self.out or self.out[-1].endswith("\n")):
            text = text.lstrip()
        self.write(text)
