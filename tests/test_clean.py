"""Golden outputs of the cleaning recipes on real tweets from the train CSV.

Each expected string was produced once and checked by hand against the tutorial's steps:
drop ``http\\S+``; drop ``!"#$%&()*+,-./:;<=>@[\\]^_`{|}~`` (apostrophe and '?' stay);
lowercase; digits to spaces; collapse whitespace; then (tweet-v1 only) spaCy lookup lemmas.
"""

from __future__ import annotations

import dataclasses

import pytest

from featurestore.embedders import default_recipe
from featurestore.errors import FeatureStoreError
from featurestore.inputs.clean import RECIPES, TUTORIAL_PUNCTUATION, get_recipe
from tests.conftest import run_python, train_rows

IDS = ["1", "4", "5", "20", "27", "2612"]

BASIC = {
    # URL dropped, '#' dropped, lowercase
    "1": "fingerprint pregnancy test android apps beautiful cute health igers iphoneonly iphonesia iphone",
    # ';)' dropped, apostrophes kept, URL dropped
    "4": "i'm wired i know i'm george i was made that way iphone cute daventry home",
    # '$19.95' -> '1995' -> spaces -> collapsed; '!' dropped
    "5": "what amazing service apple won't even talk to me about a question i have unless i pay them for their stupid support",  # noqa: E501 -- a golden string reads best whole
    # '5C' -> ' c'; '?!?' -> '??' ('?' is kept); '!!!' dropped
    "20": "how is the apple store gunna be out of c screens ?? it's monday and ur the fucking apple store fuckingpissed",  # noqa: E501 -- a golden string reads best whole
    # the '$&@*#' masks vanish entirely, '!' dropped
    "27": "my ipod is all messed up and i haven't done nothing to it myloss apple",
    # '@', '_', ':' dropped, digits split words, double space collapsed
    "2612": "ericcan ona sk m haha i thought s was for hahahahahah",
}

TWEET = {
    "1": "fingerprint pregnancy test android app beautiful cute health igers iphoneonly iphonesia iphone",
    "4": "i be wire i know i be george i be make that way iphone cute daventry home",
    "5": "what amaze service apple wo not even talk to me about a question i have unless i pay them for their stupid support",  # noqa: E501 -- a golden string reads best whole
    "20": "how be the apple store gunna be out of c screen ? ? it have monday and ur the fuck apple store fuckingpissed",  # noqa: E501 -- a golden string reads best whole
    "27": "my ipod be all mess up and i have not do nothing to it myloss apple",
    "2612": "ericcan ona sk be haha i think s be for hahahahahah",
}


@pytest.fixture(scope="module")
def tweets() -> dict[str, str]:
    rows = {r["id"]: r["tweet"] for r in train_rows(2700)}
    return {i: rows[i] for i in IDS}


def test_raw_v1_is_identity(tweets: dict[str, str]) -> None:
    texts = [tweets[i] for i in IDS]
    assert get_recipe("raw-v1").clean(texts) == texts
    assert tweets["2612"] == "@Eric_Can7ona: @SK77_M14 haha I thought s was for $&@*#  hahahahahah"


def test_basic_v1_golden(tweets: dict[str, str]) -> None:
    out = get_recipe("basic-v1").clean([tweets[i] for i in IDS])
    assert dict(zip(IDS, out)) == BASIC


def test_tweet_v1_golden(tweets: dict[str, str]) -> None:
    out = get_recipe("tweet-v1").clean([tweets[i] for i in IDS])
    assert dict(zip(IDS, out)) == TWEET


def test_tweet_v1_is_basic_then_lemmas(tweets: dict[str, str]) -> None:
    """Lemmatizing the basic output gives the tweet-v1 output: the steps compose."""
    lemmas_only = dataclasses.replace(get_recipe("tweet-v1"), steps=None)
    assert lemmas_only.clean(list(BASIC.values())) == list(TWEET.values())


@pytest.mark.parametrize("recipe", ["basic-v1", "tweet-v1"])
def test_every_tutorial_punctuation_char_is_dropped(recipe: str) -> None:
    text = "a" + "a".join(TUTORIAL_PUNCTUATION) + "a"
    assert get_recipe(recipe).clean([text]) == ["a" * (len(TUTORIAL_PUNCTUATION) + 1)]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("see http://x.com/a?b=1 now", "see now"),
        ("https://t.co/xyz", ""),
        ("http://x.com !!!", ""),
        ("A1B22c", "a b c"),
        ("  Tab\tand\nnewline  ", "tab and newline"),
        ("why? don't", "why? don't"),
    ],
)
def test_basic_v1_steps(raw: str, expected: str) -> None:
    assert get_recipe("basic-v1").clean([raw]) == [expected]


def test_empty_text_stays_empty_through_lemmas() -> None:
    assert get_recipe("tweet-v1").clean(["", "http://x.com !!!"]) == ["", ""]


def test_recipe_names_and_default() -> None:
    assert sorted(RECIPES) == ["basic-v1", "raw-v1", "tweet-v1"]
    assert default_recipe("minilm") == "raw-v1"  # MiniLM tokenizes natural text itself
    assert default_recipe("elmo") == default_recipe("elmo:/x") == "tweet-v1"  # the tutorial's recipe
    assert get_recipe("tweet-v1").name == "tweet-v1"


def test_lemmatizing_recipe_fingerprint_names_spacy_tables() -> None:
    fp = get_recipe("tweet-v1").fingerprint()
    assert fp["recipe"] == "tweet-v1"
    assert set(fp) == {"recipe", "spacy", "spacy_lookups_data"}
    assert get_recipe("basic-v1").fingerprint() == {"recipe": "basic-v1"}


def test_unknown_recipe_lists_known_ones() -> None:
    with pytest.raises(FeatureStoreError) as err:
        get_recipe("tweet-v9")
    msg = str(err.value)
    assert "'tweet-v9'" in msg
    for name in ("raw-v1", "basic-v1", "tweet-v1"):
        assert name in msg


def test_the_fs_process_lemmatizes_without_importing_torch() -> None:
    # thinc imports torch for its torch layers (1.3 s); the fs command's spaCy goes without it, same lemmas,
    # and torch still imports afterwards (a torch embedder in the same process).
    import json

    texts = [r["tweet"] for r in train_rows(40)]
    code = (
        "import json, sys\n"
        "import cli.main\n"
        "from featurestore.inputs.clean import get_recipe\n"
        f"out = get_recipe('tweet-v1').clean({texts!r})\n"
        "had_torch = 'torch' in sys.modules\n"
        "import torch\n"
        "print(json.dumps([out, had_torch, torch.tensor([1.0]).item()]))\n"
    )
    out, had_torch, one = json.loads(run_python(code).strip().splitlines()[-1])
    assert not had_torch and one == 1.0
    assert out == get_recipe("tweet-v1").clean(texts)  # this process: spaCy imported as usual


def test_the_lemmatizer_is_loaded_afresh_once_it_holds_too_many_words(monkeypatch: pytest.MonkeyPatch) -> None:
    """A long ingest of new words must not grow the process without bound (spaCy keeps every word it saw);
    a fresh pipeline gives the same lemmas."""
    from featurestore.inputs import clean

    texts = [f"running {w}ing cats {w}ed" for w in ("zork", "blarf", "quix", "vemp", "dralt", "snorb")]
    tweet = get_recipe("tweet-v1")
    before = tweet.clean(texts)
    first = clean._lemmatizer()
    monkeypatch.setattr(clean, "VOCAB_LIMIT", len(first.vocab) + 3)  # the next call adds more than 3 words
    assert tweet.clean([f"{t} {w}" for t, w in zip(texts, ("plimb", "gorv", "tazzle", "wumph", "krell", "yomp"))])
    fresh = clean._lemmatizer()
    assert fresh is not first and len(fresh.vocab) < len(first.vocab)
    assert tweet.clean(texts) == before
