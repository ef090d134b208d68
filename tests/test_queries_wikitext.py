"""Markup stripping and the tokenizer rule."""

from clipcurate.queries.wikitext import drop_templates_and_tables, is_word, strip_markup, tokens, words


def test_templates_and_tables_nested():
    text = "a {{x|{{y|z}}|w}} b {|\n| {{c}} cell\n{| inner\n|}\n|} c {{d|}} e"
    assert drop_templates_and_tables(text).split() == ["a", "b", "c", "e"]


def test_unbalanced_braces_keep_text():
    assert "after" in drop_templates_and_tables("before {{unclosed after")
    assert drop_templates_and_tables("x }} y").split() == ["x", "}}", "y"]


def test_links_files_categories_refs():
    text = ("The [[motion of no confidence|motion]] in [[Germany]]s [[File:A.jpg|thumb|A [[caption]] here]]"
            "[[Category:Politics]] [[de:Misstrauensvotum]] [[:Category:Shown]]"
            "<ref name=\"a\">Cited {{cite web|x}}</ref> <ref name=b/> <!-- hidden --> "
            "'''bold''' ''it'' [http://example.com label] http://bare.example.org/x &nbsp;end __NOTOC__"
            "<math>x^2</math> <small>small</small><br/>next")
    plain = strip_markup(text)
    assert words(plain) == ["The", "motion", "in", "Germanys", "Category", "Shown", "bold", "it", "label",
                            "end", "small", "next"]


def test_tokenizer_rule():
    toks = tokens("Don't stop, well-known 1990s art_work. New York\nCity — O’Brien")
    ws = [t for t in toks if is_word(t)]
    assert ws == ["Don't", "stop", "well-known", "1990s", "art", "work", "New", "York", "City", "O’Brien"]
    # breaks sit between clauses: no bigram spans "stop, well-known" or "York\nCity"
    assert "," in toks and "\n" in toks and "." in toks
    i = toks.index("stop")
    assert not is_word(toks[i + 1])


def _words_and_pairs(toks):
    """Word counts and the word pairs with no break between them."""
    ws = [t for t in toks if is_word(t)]
    pairs = [(a, b) for a, b in zip(toks, toks[1:]) if is_word(a) and is_word(b)]
    return ws, pairs


def test_count_tokens_same_words_and_pairs_as_tokens():
    """Counting's merged breaks give exactly the words and word pairs of the documented rule."""
    import random

    from clipcurate.queries.wikitext import count_tokens

    hard = ["Don't stop, well-known 1990s art_work. New York\nCity — O’Brien",
            "a - b -- c ' d '' e ’f g- h -i j'k' l). (m n!?\n\n o\t p _ q __ r",
            "x-\n-y z .-' w", "", "  ", "...", "end."]
    rng = random.Random(0)
    alphabet = "ab é1_ -'’.,\n\t(|ß٣"
    hard += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(3000)]
    for text in hard:
        assert _words_and_pairs(count_tokens(text)) == _words_and_pairs(tokens(text)), repr(text)


def test_fast_url_drop_equals_the_regex():
    import random

    from clipcurate.queries.wikitext import _URL_RE, _drop_urls

    hard = ["see http://a.org/x and https://b.org|y ftp://c", "ftp://http://y", "http://ftp://y z",
            "x://y ://z hhttp://q httpss://r https:// ftp:/ a", "://", "http://", "[http://a b]",
            "http://a/http://b https://c<d ftp://e]f"]
    rng = random.Random(1)
    parts = ["http", "https", "ftp", "://", ":", "/", " ", "a", "s", "|", "]", "<", "h", "t"]
    hard += ["".join(rng.choice(parts) for _ in range(rng.randint(0, 25))) for _ in range(5000)]
    for text in hard:
        assert _drop_urls(text) == _URL_RE.sub("", text), repr(text)
