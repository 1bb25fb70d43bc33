"""clean_text: keeps what a language model should learn, removes markup, URLs and junk."""

from llmos_jax.data import clean_text


def test_keeps_punctuation_case_and_plain_text():
    text = 'Hello, World! Isn\'t it (really) 3.5% better? Yes: "quoted"; done.'
    assert clean_text(text) == text


def test_strips_tags_and_unescapes_entities():
    html = "<p>Fish &amp; chips</p><p>Cost: <b>&pound;5</b> &lt;cheap&gt;</p>"
    assert clean_text(html) == "Fish & chips\n\nCost: £5 <cheap>"


def test_does_not_eat_comparisons():
    text = "if a < b and c > d: swap. Also x<y and y>z, and 1 <= 2 >= 0."
    assert clean_text(text) == text


def test_removes_scripts_styles_and_comments():
    html = "<html><head><style>p {color: red}</style></head><body>Visible<!-- hidden -->"
    html += "<script>if (a < b) alert('x');</script> text</body></html>"
    assert clean_text(html) == "Visible text"


def test_strip_html_off_keeps_markup():
    assert clean_text("<b>bold</b> &amp;", strip_html=False) == "<b>bold</b> &amp;"


def test_strips_urls_but_keeps_sentence_punctuation():
    text = "See https://example.com/a?b=1. Or visit www.python.org, or http://x.y/z!"
    assert clean_text(text) == "See. Or visit, or!"
    assert clean_text("see https://example.com now", strip_urls=False) == (
        "see https://example.com now"
    )


def test_nfkc():
    assert clean_text("ﬁnd the ﬂag") == "find the flag"
    assert clean_text("１２３ＡＢＣ") == "123ABC"
    assert clean_text("non\u00a0breaking") == "non breaking"


def test_whitespace_and_control_characters():
    text = "a  b\t\tc  \r\n\n\n\n\nnext\x00 line\u200b\n\n   indented   code  \n\n\n"
    assert clean_text(text) == "a b c\n\nnext line\n\n   indented code"


def test_lowercase_and_punctuation_are_opt_in():
    text = "Don't STOP, now!"
    assert clean_text(text, lowercase=True) == "don't stop, now!"
    assert clean_text(text, strip_punctuation=True) == "Dont STOP now"
    assert clean_text("«Ça» — oui…", strip_punctuation=True, lowercase=True) == "ça oui"
