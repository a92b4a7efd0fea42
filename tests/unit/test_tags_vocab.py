"""Tag normalisation and the vocabulary: which spellings meet, which tags are targets, and vocab.tsv."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from pretrain.tags import normalize_tag, normalize_tags
from pretrain.vocab import HEADER, Vocabulary, build_vocabulary, coverage


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("#Café!", "cafe"),
        (" CAFÉ ", "cafe"),
        ("cafe", "cafe"),
        ("Cafe\u0301", "cafe"),  # decomposed accent
        ("ＣＡＦＥ", "cafe"),  # fullwidth letters
        ("＃ｃａｆé！", "cafe"),  # fullwidth '#' and '!' are punctuation after NFKD
        ("\ufb01sh", "fish"),  # the 'fi' ligature is a compatibility form
        ("x\u00b2", "x2"),  # superscript two
        ("Straße", "strasse"),  # casefold, not lower
        ("ΕΛΛΆΔΑ", "ελλαδα"),  # non-Latin letters stay letters
        ("東京", "東京"),
        ("2019", "2019"),
        ("New---York!!", "new york"),
        ("new_york", "new york"),  # underscore is a separator too
        ("a.,;:/\\b", "a b"),
        ("  spaced \t\n out  ", "spaced out"),
        ("#sun-set, beach!", "sun set beach"),
        ("", ""),
        ("   ", ""),
        ("#", ""),
        ("!!!...", ""),
        ("\u0301", ""),  # a lone combining mark
    ],
)
def test_normalize_tag(raw: str, expected: str) -> None:
    assert normalize_tag(raw) == expected


def test_normalize_tag_is_idempotent() -> None:
    for raw in ["#Café!", "ＣＡＦＥ", "New---York!!", "\ufb01sh", "Straße"]:
        once = normalize_tag(raw)
        assert normalize_tag(once) == once


def test_normalize_tags_keeps_first_occurrence_order_and_drops_empties_and_repeats() -> None:
    raw = ["#Beach", "sun", "BEACH!", "", "!!", "Café", "cafe", "  sun ", "ＳＵＮ", "sea"]
    assert normalize_tags(raw) == ["beach", "sun", "cafe", "sea"]


def test_normalize_tags_ignores_non_strings() -> None:
    assert normalize_tags(["a", None, 5, ["b"], "B", {"c": 1}, "c"]) == ["a", "b", "c"]
    assert normalize_tags([]) == []
    assert normalize_tags(iter(["x", "X"])) == ["x"]


COUNTS = Counter({"d": 1, "c": 3, "a": 5, "b": 3, "e": 2})


def test_build_vocabulary_min_count_and_order() -> None:
    vocab = build_vocabulary(COUNTS, min_count=2)
    assert vocab.tags == ["a", "b", "c", "e"]
    assert vocab.counts == [5, 3, 3, 2]
    assert vocab.index == {"a": 0, "b": 1, "c": 2, "e": 3}
    assert len(vocab) == 4


def test_build_vocabulary_defaults_keep_everything() -> None:
    vocab = build_vocabulary(COUNTS)
    assert vocab.tags == ["a", "b", "c", "e", "d"]
    assert vocab.counts == [5, 3, 3, 2, 1]


def test_build_vocabulary_ties_are_ordered_by_name_not_insertion() -> None:
    counts = Counter()
    for tag in ["zeta", "alpha", "mid", "beta"]:
        counts[tag] += 2
    counts["top"] = 9
    assert build_vocabulary(counts).tags == ["top", "alpha", "beta", "mid", "zeta"]


@pytest.mark.parametrize(
    ("top_k", "expected"),
    [(1, ["a"]), (2, ["a", "b"]), (3, ["a", "b", "c"]), (4, ["a", "b", "c", "e"]), (0, ["a", "b", "c", "e"]),
     (100, ["a", "b", "c", "e"])],
)
def test_build_vocabulary_top_k(top_k: int, expected: list[str]) -> None:
    vocab = build_vocabulary(COUNTS, min_count=2, top_k=top_k)
    assert vocab.tags == expected
    assert vocab.counts == [COUNTS[t] for t in expected]


@pytest.mark.parametrize("counts", [Counter({"a": 3, "b": 1}), Counter()])
def test_build_vocabulary_raises_when_nothing_survives(counts: Counter) -> None:
    with pytest.raises(ValueError, match=r"no tag is seen 4 times or more: lower shards\.vocab\.min_count"):
        build_vocabulary(counts, min_count=4)


def test_encode_drops_out_of_vocabulary_and_repeats_in_order() -> None:
    vocab = Vocabulary(["a", "b", "c"], [5, 3, 3])
    assert vocab.encode(["c", "oov", "a", "c", "b", "a", "zzz"]) == [2, 0, 1]
    assert vocab.encode(["b"]) == [1]
    assert vocab.encode(["oov", "other"]) == []
    assert vocab.encode([]) == []
    assert vocab.encode(t for t in ["a", "a"]) == [0]


def test_encode_does_not_normalise() -> None:
    vocab = Vocabulary(["cafe"], [2])
    assert vocab.encode(["Café", "#cafe"]) == []
    assert vocab.encode(normalize_tags(["Café", "#cafe"])) == [0]


def test_save_writes_the_documented_format(tmp_path: Path) -> None:
    vocab = build_vocabulary(COUNTS, min_count=2)
    path = vocab.save(tmp_path / "vocab.tsv")
    assert path == tmp_path / "vocab.tsv"
    assert path.read_text(encoding="utf-8") == "tag\tcount\tindex\na\t5\t0\nb\t3\t1\nc\t3\t2\ne\t2\t3\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vocab.tsv"]  # no temporary file left


def test_save_load_round_trip(tmp_path: Path) -> None:
    vocab = Vocabulary(["東京", "new york", "cafe", "x2"], [10, 7, 7, 2])
    loaded = Vocabulary.load(vocab.save(tmp_path / "sub" / "vocab.tsv"))
    assert loaded.tags == vocab.tags
    assert loaded.counts == vocab.counts
    assert loaded.index == vocab.index
    assert loaded.encode(["cafe", "東京"]) == [2, 0]


def test_load_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "vocab.tsv"
    path.write_text(f"{HEADER}\na\t5\t0\n\nb\t3\t1\n\n", encoding="utf-8")
    loaded = Vocabulary.load(path)
    assert loaded.tags == ["a", "b"]
    assert loaded.counts == [5, 3]


@pytest.mark.parametrize(
    ("bad_line", "expected_index"),
    [
        ("b\tthree\t1", 1),  # count not a number
        ("b\t3\t5", 1),  # index out of sequence
        ("b\t3", 1),  # a column missing
        ("b\t3\t1\textra", 1),  # a column too many
        ("b\t-3\t1", 1),  # negative count
    ],
)
def test_load_malformed_line_names_file_and_line(tmp_path: Path, bad_line: str, expected_index: int) -> None:
    path = tmp_path / "vocab.tsv"
    path.write_text(f"{HEADER}\na\t5\t0\n{bad_line}\nc\t1\t2\n", encoding="utf-8")
    with pytest.raises(ValueError) as info:
        Vocabulary.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3: ")
    assert f"expected 'tag<TAB>count<TAB>{expected_index}'" in message
    assert repr(bad_line) in message


def test_load_malformed_first_data_line(tmp_path: Path) -> None:
    path = tmp_path / "vocab.tsv"
    path.write_text(f"{HEADER}\na\t5\t1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"^{path}:2: expected 'tag<TAB>count<TAB>0'"):
        Vocabulary.load(path)


def test_load_missing_file_names_it_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "vocab.tsv"
    with pytest.raises(FileNotFoundError, match=r"nowhere/vocab\.tsv: no vocabulary file .*webly synth"):
        Vocabulary.load(path)


def test_coverage() -> None:
    # 14 occurrences in all; min_count=2 keeps a, b, c, e = 13 of them
    assert coverage(build_vocabulary(COUNTS, min_count=2), COUNTS) == pytest.approx(13 / 14)
    assert coverage(build_vocabulary(COUNTS, min_count=2, top_k=1), COUNTS) == pytest.approx(5 / 14)
    assert coverage(build_vocabulary(COUNTS), COUNTS) == 1.0
    assert coverage(Vocabulary(["a"], [5]), Counter()) == 0.0
