"""Issue 23, class 1: a column is never chosen silently among candidates.

The rule: the one column named like a role's defaults is used; two of them are an error naming both
and the flag that chooses, unless a known format has a rule (Twitter API objects: the full text over
the cut one, ``id_str`` over ``id``), which ``Table.column_rules`` names. A JSON record without the
chosen key is an error naming its line and the fix (a label key left out is no label, and said so).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from featurestore.errors import InputFileError
from featurestore.inputs.sources import ID_COLUMNS, LABEL_COLUMNS, TEXT_COLUMNS, Table, pick_column, read_table

CUT = "so this is a long tweet that the API cut short at one hundred and forty characters, as v1.1 does for…"
FULL = CUT[:-1] + " every tweet longer than that, and here is the rest of it"


def _write(path: Path, content: str) -> Path:
    path.write_text(content, encoding="utf-8", newline="")
    return path


def _err(path: Path, **kw) -> str:
    with pytest.raises(InputFileError) as err:
        read_table(str(path), **kw)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def _jsonl(path: Path, records: list[dict]) -> Path:
    return _write(path, "".join(json.dumps(r) + "\n" for r in records))


# ---------------------------------------------------------------- two candidates: an error naming both


@pytest.mark.parametrize(
    "header, role, both",
    [
        ("id,Text,tweet", "text", ("Text", "tweet")),
        ("tweet,text", "text", ("tweet", "text")),
        ("content,body,label", "text", ("content", "body")),
        ("text,TEXT", "text", ("text", "TEXT")),
        ("id,tweet_id,tweet", "id", ("id", "tweet_id")),
        ("id,label,sentiment,tweet", "label", ("label", "sentiment")),
        ("id,target,class,tweet", "label", ("target", "class")),
    ],
)
def test_two_candidate_columns_are_an_error_naming_both(tmp_path: Path, header: str, role: str, both: tuple) -> None:
    width = header.count(",") + 1
    p = _write(tmp_path / "in.csv", f"{header}\n" + ",".join(str(k) for k in range(width)) + "\n")
    msg = _err(p)
    assert f"could hold the {role}: {both[0]}, {both[1]}" in msg and f"{role}_col NAME, one of them" in msg
    chosen = read_table(str(p), **{f"{role}_col": both[1]})  # the flag chooses; nothing else changes
    assert getattr(chosen, f"{role}_column") == both[1]


def test_a_file_with_one_candidate_per_role_is_read_as_before(tmp_path: Path) -> None:
    t = read_table(str(_write(tmp_path / "in.csv", "Tweet_ID,Sentiment,TEXT,note\n5,pos,hi,x\n")))
    assert (t.id_column, t.label_column, t.text_column) == ("Tweet_ID", "Sentiment", "TEXT")
    assert t.column_rules == {} and t.notes == []


def test_two_columns_alike_for_a_given_name_need_the_exact_one(tmp_path: Path) -> None:
    p = _write(tmp_path / "in.csv", "id,Text,text\n1,a,b\n")
    assert read_table(str(p), text_col="Text").texts == ["a"]  # exact names choose
    msg = _err(p, text_col="TEXT")
    assert "2 columns named like 'TEXT': Text, text" in msg and "exact name" in msg


def test_a_header_naming_two_columns_alike_is_refused(tmp_path: Path) -> None:
    p = _write(tmp_path / "in.csv", "id,text,text\n1,first,second\n")
    msg = _err(p)
    assert "2 columns headed 'text' (columns 2, 3)" in msg and "text_col text.1" in msg
    assert read_table(str(p), text_col="text.1").texts == ["second"]


def test_pick_column_refuses_two_candidates_for_every_caller() -> None:
    """The Ray engine resolves columns with the same function, so it never guesses either."""
    with pytest.raises(InputFileError, match="could hold the text: tweet, text"):
        pick_column(["id", "tweet", "text"], None, TEXT_COLUMNS, set(), "text", "[[text_col]]", "f.csv")
    assert pick_column(["id", "tweet", "text"], "text", TEXT_COLUMNS, set(), "text", "[[text_col]]", "f.csv") == "text"
    assert pick_column(["ID", "tweet"], None, ID_COLUMNS, {"tweet"}, "id", "[[id_col]]", "f.csv") == "ID"
    assert pick_column(["tweet"], None, LABEL_COLUMNS, {"tweet"}, "label", "[[label_col]]", "f.csv") is None


# ---------------------------------------------------------------- JSON records that spell a key two ways


def test_jsonl_lines_with_different_text_keys_are_refused(tmp_path: Path) -> None:
    p = _jsonl(tmp_path / "in.jsonl", [{"id": 1, "text": "a"}, {"id": 2, "tweet": "b"}, {"id": 3, "text": "c"}])
    msg = _err(p)
    assert "lines spell the text key differently: 'text' (line 1) and 'tweet' (line 2)" in msg
    assert "use one key for the text on every line" in msg


@pytest.mark.parametrize("name", ["in.jsonl", "in.json"])
def test_a_record_without_the_chosen_key_names_its_line(tmp_path: Path, name: str) -> None:
    records = [{"id": 1, "tweet": "a"}, {"id": 2, "text": "b", "tweet": "b"}, {"id": 3, "text": "c"}]
    p = _write(
        tmp_path / name,
        json.dumps(records) if name.endswith(".json") else "".join(json.dumps(r) + "\n" for r in records),
    )
    msg = _err(p, text_col="tweet")
    unit = "line" if name.endswith("jsonl") else "row"
    assert f"{unit} 3 has no 'tweet' key" in msg and f"(that {unit} has 'text' instead)" in msg
    assert "could hold the text: tweet, text" in _err(p)  # both keys on one record: choose with the flag


def test_a_record_without_any_text_key_is_refused(tmp_path: Path) -> None:
    p = _jsonl(tmp_path / "in.jsonl", [{"id": 1, "text": "a"}, {"id": 2}])
    msg = _err(p)
    assert "line 2 has no 'text' key" in msg and '"text": "" for an empty tweet' in msg
    assert read_table(str(_jsonl(p, [{"id": 1, "text": "a"}, {"id": 2, "text": None}]))).texts == ["a", ""]


def test_a_label_key_left_out_is_no_label_and_said_so(tmp_path: Path) -> None:
    """Many JSON writers leave null fields out: an absent label is a null one, counted in the notes."""
    t = read_table(str(_jsonl(tmp_path / "in.jsonl", [{"text": "a", "label": "pos"}, {"text": "b"}])))
    assert t.labels.tolist() == ["pos", ""] and "labels: 1 lines without a 'label' key read as no label" in t.notes


def test_a_label_spelled_with_another_key_on_some_records_is_refused(tmp_path: Path) -> None:
    p = _jsonl(tmp_path / "in.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "sentiment": "neg"}])
    assert "lines spell the label key differently: 'label' (line 1) and 'sentiment' (line 2)" in _err(p)
    msg = _err(p, label_col="label")
    assert "line 2 has no 'label' key" in msg and "(that line has 'sentiment' instead)" in msg


# ---------------------------------------------------------------- Twitter API objects: the known rule


def _v11(i: int, text: str, **more) -> dict:
    return {
        "created_at": "Wed Oct 10 20:19:24 +0000 2018",
        "id": 1050118621198921728 + i,
        "id_str": str(1050118621198921728 + i),
        "user": {"id": 6253282, "screen_name": "TwitterAPI"},
        "entities": {"hashtags": []},
        **more,
        "text": text,
    }


def test_twitter_v11_full_text_wins_over_the_cut_text(tmp_path: Path) -> None:
    records = [_v11(0, CUT, full_text=FULL, truncated=False), _v11(1, "short", full_text="short", truncated=False)]
    t = read_table(str(_jsonl(tmp_path / "in.jsonl", records)))
    assert t.texts == [FULL, "short"]
    assert t.text_column == "full_text > text" and t.id_column == "id_str > id"
    assert t.ids.tolist() == ["1050118621198921728", "1050118621198921729"]
    assert "full_text, else its text (Twitter API objects)" in t.column_rules["text"]
    assert "id_str, else its id" in t.column_rules["id"]
    assert any(n.startswith("text: ") for n in t.notes) and "Twitter API objects" in t.format


def test_twitter_streaming_extended_tweet_full_text_wins(tmp_path: Path) -> None:
    records = [
        _v11(0, CUT, truncated=True, extended_tweet={"full_text": FULL, "display_text_range": [0, 200]}),
        _v11(1, "a short one", truncated=False),
    ]
    t = read_table(str(_write(tmp_path / "in.json", json.dumps(records))))
    assert t.texts == [FULL, "a short one"] and t.text_column == "extended_tweet.full_text > text"


def test_twitter_v2_note_tweet_wins_and_ids_stay_strings(tmp_path: Path) -> None:
    doc = {
        "data": [
            {"id": "1", "text": CUT, "edit_history_tweet_ids": ["1"], "note_tweet": {"text": FULL}},
            {"id": "2", "text": "short", "edit_history_tweet_ids": ["2"]},
        ],
        "meta": {"result_count": 2},
    }
    t = read_table(str(_write(tmp_path / "in.json", json.dumps(doc))))
    assert t.texts == [FULL, "short"] and t.ids.tolist() == ["1", "2"] and t.text_column == "note_tweet.text > text"


def test_twitter_id_str_alone_is_the_id(tmp_path: Path) -> None:
    t = read_table(str(_jsonl(tmp_path / "in.jsonl", [{"id_str": "0012", "full_text": "a", "truncated": False}])))
    assert t.ids.tolist() == ["0012"] and t.id_column == "id_str" and t.texts == ["a"]


def test_truncated_tweets_without_a_full_text_are_said_so(tmp_path: Path) -> None:
    t = read_table(str(_jsonl(tmp_path / "in.jsonl", [_v11(0, CUT, truncated=True), _v11(1, "ok", full_text="ok")])))
    assert t.texts == [CUT, "ok"]
    assert any("1 tweet marked truncated carry only the cut text" in n for n in t.notes)


def test_a_named_column_overrides_the_twitter_rule(tmp_path: Path) -> None:
    records = [_v11(0, CUT, full_text=FULL)]
    t = read_table(str(_jsonl(tmp_path / "in.jsonl", records)), text_col="text", id_col="id")
    assert t.texts == [CUT] and t.ids.tolist() == ["1050118621198921728"] and t.column_rules == {}


def test_a_flattened_twitter_csv_takes_the_same_rule(tmp_path: Path) -> None:
    p = _write(tmp_path / "in.csv", f'id,id_str,text,full_text,truncated\n1,"0001","{CUT}","{FULL}",false\n')
    t = read_table(str(p))
    assert t.texts == [FULL] and t.ids.tolist() == ["0001"] and isinstance(t, Table)


def test_full_text_and_text_outside_twitter_objects_are_two_candidates(tmp_path: Path) -> None:
    p = _jsonl(tmp_path / "in.jsonl", [{"id": 1, "text": "a", "full_text": "b"}])
    assert "could hold the text: text, full_text" in _err(p)


def test_retweets_are_said_to_keep_the_apis_text(tmp_path: Path) -> None:
    rt = _v11(0, "RT @a: " + CUT, full_text="RT @a: " + CUT, retweeted_status=_v11(1, CUT, full_text=FULL))
    t = read_table(str(_jsonl(tmp_path / "in.jsonl", [rt, _v11(2, "ok", full_text="ok")])))
    assert t.texts == ["RT @a: " + CUT, "ok"]
    assert any("1 retweet keep the API's 'RT @user: ...' text" in n for n in t.notes)


@pytest.mark.parametrize("name", ["in.jsonl", "in.json"])
def test_a_key_named_twice_in_one_object_is_refused(tmp_path: Path, name: str) -> None:
    """json.loads keeps the last of two values silently: which text is meant cannot be told."""
    record = '{"id": 1, "text": "first", "text": "second"}'
    p = _write(tmp_path / name, f"[{record}]" if name.endswith(".json") else record + "\n" + record + "\n")
    msg = _err(p)
    assert "has the key 'text' twice in one object, with different values" in msg and "keep one of them" in msg
    assert ("line 1" in msg) == name.endswith(".jsonl")
    same = _write(tmp_path / "same.jsonl", '{"id": 1, "text": "a", "text": "a"}\n')
    assert read_table(str(same)).texts == ["a"]  # the same value twice says nothing new
