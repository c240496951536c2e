"""eagle3kit.sources.chatgpt_html: raw ShareGPT answers (the shared page's HTML) as markdown."""

from __future__ import annotations

import json

import pytest

from conftest import read_jsonl
from eagle3kit.mix import run_mix
from eagle3kit.sources.chatgpt_html import html_to_markdown, looks_like_html
from eagle3kit.sourcespec import SourceSpec

#: An answer as RyokoAI/ShareGPT52K stores it: the page's markup, its code block with the
#: language label, the "Copy code" button and its icon, highlighted code.
PAGE = (
    '<div class="markdown prose w-full break-words dark:prose-invert light"><p>SAS is a <strong>statistics</strong> '
    'package &amp; more. Try <code>proc print</code>:</p><pre><div class="bg-black mb-4 rounded-md"><div class="flex '
    'items-center relative text-gray-200 bg-gray-800 px-4 py-2 text-xs font-sans"><span class="">python</span><button '
    'class="flex ml-auto gap-2"><svg stroke="currentColor" fill="none"><path d="M16 4h2"></path><rect x="8" y="2">'
    '</rect></svg>Copy code</button></div><div class="p-4 overflow-y-auto"><code class="!whitespace-pre hljs '
    'language-python"><span class="hljs-keyword">def</span> <span class="hljs-title function_">f</span>(x):\n'
    '    <span class="hljs-keyword">return</span> x &lt; <span class="hljs-number">2</span>\n</code></div></div></pre>'
    '<ol><li><p>First step</p><p>more on it</p></li><li>Second, <em>stressed</em><ul><li>nested a</li><li>nested b'
    '</li></ul></li></ol><h2>Table</h2><table><thead><tr><th>Name</th><th>Value</th></tr></thead><tbody><tr><td>a'
    '</td><td>1 | 2</td></tr></tbody></table><p>Line one<br>line two</p><hr><p>Bye.</p></div>'
)

MARKDOWN = """SAS is a **statistics** package & more. Try `proc print`:

```python
def f(x):
    return x < 2
```

1. First step
   more on it
2. Second, *stressed*
   - nested a
   - nested b

## Table

| Name | Value |
| --- | --- |
| a | 1 \\| 2 |

Line one
line two

---

Bye."""


def test_a_page_answer_becomes_the_markdown_the_model_wrote():
    assert html_to_markdown(PAGE) == MARKDOWN


def test_plain_code_blocks_and_paragraphs():
    assert html_to_markdown("<p>Run:</p><pre><code>ls -l\n  cd /tmp\n</code></pre>") == "Run:\n\n```\nls -l\n  cd /tmp\n```"
    assert html_to_markdown("<p>a   b\n c</p>\n\n<p>d</p>") == "a b c\n\nd"


@pytest.mark.parametrize("text, html", [
    ('<div class="markdown prose"><p>Hi</p></div>', True),
    ('\n<div class="request-:r0:-0 markdown prose break-words dark:prose-invert light"><p>Hi</p></div>', True),
    ("<p>Hi</p>", False),  # HTML the model may have written
    ('<div class="container"><p>Hi</p></div>', False),
    ("Use <div> for blocks.", False),
    ("<div> is a block element", False),
    ("plain text", False),
])
def test_what_counts_as_page_markup(text, html):
    assert looks_like_html(text) is html


def test_a_raw_sharegpt_dump_mixes_to_markdown(registry, tmp_path):
    # the answers only: a user's message that is markup stays as typed
    raw = [{"id": "x", "conversations": [
        {"from": "human", "value": "<div class=\"markdown\">Why does this not center?</div>"},
        {"from": "gpt", "value": PAGE},
    ]}]
    (tmp_path / "ryoko.json").write_text(json.dumps(raw), encoding="utf-8")
    run_mix(registry, [SourceSpec.parse(f"sharegpt:path={tmp_path / 'ryoko.json'}")], tmp_path / "out",
            tmp_path / "cache", test_ratio=0)
    [record] = read_jsonl(tmp_path / "out" / "train.jsonl")
    assert record["conversations"] == [{"from": "human", "value": "<div class=\"markdown\">Why does this not center?</div>"},
                                       {"from": "gpt", "value": MARKDOWN}]
