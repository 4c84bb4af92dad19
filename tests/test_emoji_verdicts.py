"""The emoji strict scorer (issue 36, item 4): Unicode groups of captions, and verdicts an image must earn."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ilct.data.emoji_groups import GROUPS, base, emoji_groups, name_set, read_emoji_test
from ilct.errors import IlctError
from ilct.metrics import emoji_verdicts as ev

ROOT = Path(__file__).resolve().parents[1]
EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")

TINY_TEST = """# group: Smileys & Emotion
# subgroup: face-smiling
1F600                                                  ; fully-qualified     # 😀 E1.0 grinning face
# group: People & Body
# subgroup: person-sport
26F9 FE0F 200D 2640 FE0F                               ; fully-qualified     # ⛹️‍♀️ E4.0 woman bouncing ball
# group: Component
# subgroup: skin-tone
1F3FB                                                  ; component           # 🏻 E1.0 light skin tone
"""


def test_base_strips_every_skin_tone_and_keeps_the_order():
    assert base("waving hand sign, medium skin tone") == "waving hand sign"
    assert base("man, handshake, medium skin tone, woman, medium-dark skin tone") == "man, handshake, woman"
    assert base("grinning face") == "grinning face"


def test_captions_match_their_sequence_in_any_order(tmp_path):
    f = tmp_path / "emoji-test.txt"
    f.write_text(TINY_TEST, encoding="utf-8")
    assert name_set("female sign, person with ball") == name_set("person with ball, female sign")
    got = emoji_groups(["grinning face", "female sign, person with ball", "person with ball, female sign",
                        "light skin tone", "no such emoji"], f)
    # Component and unknown captions have no group
    assert got == [GROUPS.index("Smileys & Emotion"), GROUPS.index("People & Body"),
                   GROUPS.index("People & Body"), -1, -1]


def test_a_missing_or_foreign_emoji_test_file_is_one_clear_error(tmp_path):
    with pytest.raises(IlctError, match="apt-get install unicode-data"):
        read_emoji_test(tmp_path / "absent.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("# group: X\nnot hex ; fully-qualified\n", encoding="utf-8")
    with pytest.raises(IlctError, match="not Unicode's emoji-test.txt"):
        read_emoji_test(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(IlctError, match="no emoji sequences"):
        read_emoji_test(empty)


@pytest.mark.skipif(not EMOJI_TEST.is_file(), reason="unicode-data is not installed")
def test_the_real_file_groups_known_captions():
    got = emoji_groups(["grinning face", "female sign, person with ball", "cat face", "slice of pizza", "rocket",
                        "waving hand sign, medium skin tone"], EMOJI_TEST)
    assert [GROUPS[g] for g in got] == ["Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink",
                                        "Travel & Places", "People & Body"]


class StubScorer:
    """features = the mean colour of each image (3-D); group = the brightest channel; "none" for grey images."""

    def features(self, images):
        f = torch.from_numpy(images.reshape(len(images), -1, 3).mean(1) / 255.0).double()
        none = (f.max(1).values - f.min(1).values).numpy() < 0.1
        return f, f.argmax(1).numpy(), none


def pure(rgb, n=1, side=8):
    return np.broadcast_to(np.asarray(rgb, np.uint8), (n, side, side, 3)).copy()


@pytest.fixture
def judge():
    real = np.concatenate([pure((250, 10, 10)), pure((240, 20, 10)), pure((10, 250, 10)), pure((10, 240, 20))])
    scorer = StubScorer()
    ref = ev.Reference.of(scorer, real, k=1)
    return ev.Judge(scorer, ref, ev.pixels(real), np.asarray(["red", "red", "green", "green"], dtype=object))


def test_reference_radii_are_the_kth_distance_to_another_emoji(judge):
    r = judge.reference.radii.numpy()
    d = np.linalg.norm(np.array([250 - 240, 10 - 20, 0]) / 255.0)
    np.testing.assert_allclose(r, [d, d, d, d], rtol=1e-6)


def test_an_image_must_look_like_an_emoji_before_its_group_or_emoji_count(judge):
    images = np.concatenate([pure((245, 15, 10)),  # a red emoji, asked red: all three
                             pure((245, 15, 10)),  # the same, asked green: present only
                             pure((128, 128, 128)),  # grey: "none" (the classifier's tenth class)
                             pure((10, 10, 250))])  # blue: not none, but far from every real emoji
    v = ev.image_verdicts(images, np.array([0, 1, 0, 2]), ["red", "green", "red", "blue"], judge)
    assert v["present"].tolist() == [True, True, False, False]
    assert v["group_ok"].tolist() == [True, False, False, False]
    assert v["emoji_ok"].tolist() == [True, False, False, False]
    assert v["shown_group"].tolist() == [0, 0, -1, -1]
    s = ev.summary(v, np.array([0, 1, 0, 2]))
    assert (s["present"]["k"], s["group"]["k"], s["emoji"]["k"], s["n"]) == (2, 1, 1, 4)
    assert s["confusion"][0][0] == 1 and s["confusion"][0][len(GROUPS)] == 1  # the last column: no emoji
    assert s["per_group"][GROUPS[1]]["acc"] == 0.0
    lo, hi = s["present"]["ci95"]
    assert lo < 0.5 < hi


def test_verdicts_refuse_mismatched_requests(judge):
    with pytest.raises(ValueError, match="2 images"):
        ev.image_verdicts(pure((1, 2, 3), 2), np.array([0]), ["red"], judge)


def test_inputs_and_negatives():
    with pytest.raises(ValueError, match="uint8"):
        ev.emoji_input(np.zeros((2, 8, 8, 3), np.float32))
    x = ev.emoji_input(pure((255, 0, 0), 3, 64))
    assert x.shape == (3, 3, ev.SIDE, ev.SIDE) and x.min() >= -1 and x.max() <= 1
    g = torch.Generator().manual_seed(0)
    real = torch.rand(10, 3, ev.SIDE, ev.SIDE, generator=g) * 2 - 1
    neg = ev.negatives(real, 9, g)
    assert neg.shape == (9, 3, ev.SIDE, ev.SIDE) and neg.min() >= -1 and neg.max() <= 1
    assert ev.augment(real, g).shape == real.shape


def test_the_benchmark_refuses_a_run_that_is_not_there(tmp_path):
    out = tmp_path / "report.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks/quality/emoji_strict.py"), "--run",
                        str(tmp_path / "nope"), "--out", str(out)], capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and p.stderr.startswith("error:")
    assert not out.exists()
