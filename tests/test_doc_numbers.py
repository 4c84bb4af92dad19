"""Every measured figure the README quotes is in a results file that its paragraph cites (issue #37).

Which numbers are figures. The README's prose is read with fenced code blocks, `inline code` and link targets left
out; of its numbers, these are not measurements and are set aside (`set_aside`):

  - part of a name or a shape: a digit joined to a letter or to `/` (DiT-T/2, H100, x86_64, beta2, TAEF2), a dotted
    name (127.0.0.1), a shape
    (8x8x4, 64x64), an integer multiple (4x the demo's steps: a measured ratio is printed with decimals, 2.6x),
    a compound (2-core, 1-step, 1- and 2-step);
  - dates and years (2026-11-30, ICLR 2025);
  - settings: a number after `=`, `<` or `>` (s1 = 640, n = 2,000, Python >= 3.11), or before a word that counts
    what a run or a machine was given (`SETTING_WORDS`: 3,000 steps, 2 threads);
  - `PUBLISHED`: figures of other sources (the paper, the authors' code, libraries), each with its reason;
  - `NOT_MEASURED`: the remaining facts of the code, the data or the test suite, each with its reason.

Every other number is a figure and must carry a kind: its unit (%, s, min, h, x, dB), else the nearest metric word
before it in its sentence (FID, recall, precision, ...: `METRIC_WORDS`). A figure without a kind fails: say
what it measures, or list why it is no measurement.

Where a figure must be. In a results file its paragraph cites (a table row is a paragraph of its own): a
docs/results/*.json named in it, or one that a docs/*.md it links to names; and there, under a key of its kind
(a FID under a key with `fid` in its path, a time under `seconds`, ...), at the precision it is printed with
(`937` matches 936.99, `0.31` matches 0.3095). A percentage also matches its fraction (31 % and 0.31); `min`
and `h` are seconds too (`10 min 21 s` is 621 s); a ratio (`3.7x`) matches a key named as a ratio, or the
quotient of two numbers of one object whose keys share a word (motion_acc / motion_chance), or of one key in
two rows of a list. Each end of a range (`98-100 %`) is a figure.

And the results files themselves: each top-level object names the command that made it, the machine and the date.
"""

from __future__ import annotations

import bisect
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RESULTS = DOCS / "results"

# words after a number (or a list of numbers: 1 or 2 evaluations) that make it a setting, what a run or a machine
# was given, not a measurement
SETTING_WORDS = ("step", "steps", "thread", "threads", "core", "cores", "CPU", "CPUs", "epoch", "epochs", "level",
                 "levels", "channel", "channels", "evaluations", "NFE", "GPU", "GPUs", "GiB", "frames", "seeds",
                 "configurations", "rounds", "parts", "samples")
# words before a number that make it a setting, an exit status or a reference (s1 80, exit 2, issue 19)
BEFORE_WORDS = ("beta2", "s0", "s1", "tau", "N", "w", "k", "n", "batch", "seed", "seeds", "rank", "exit", "exits",
                "status", "at most", "at least", "issue", "issues", "section", "Figure", "Table")

# a figure's kind when it has no unit: the nearest of these words before it in its sentence; the regex its
# results key (the path of keys down to it) must match
METRIC_WORDS = {"FID": r"fid", "recall": r"recall", "precision": r"precision", "accuracy": r"acc",
                "near-caption retrieval": r"\.near$", "PSNR": r"psnr", "MFU": r"mfu"}
# the key a figure with a unit must be found under (a percentage: also that of its sentence's metric word)
UNIT_KEYS = {"%": r"acc|near|exact|chance|rate|fraction|moved|share|percent",
             "s": r"second|wall|elapsed|(^|_)s$", "min": r"second|wall|elapsed|(^|_)s$",
             "h": r"second|wall|elapsed|hours|(^|_)s$", "ms": r"(^|_)ms", "dB": r"psnr|db",
             "x": r"speedup|ratio|factor"}

# (number as printed, a phrase of its line): why it is someone else's figure
PUBLISHED: dict[tuple[str, str], str] = {
    ("1.382", "the authors' 1.382"): "the authors' default tau for 2-step sampling (their code), also ilct's default",
    ("178,956,970", "Pillow's"): "Pillow's own decompression-bomb threshold (PIL.Image.MAX_IMAGE_PIXELS)",
    ("250", "250 ln sigma"): "c_noise = 250 ln(sigma), the noise conditioning of consistency models (Song et al. 2023)",
}

# (number as printed, a phrase of its line): why it is a fact of the code, the data or the tests; None for the
# number: any number on a line with that phrase (the counts of test cases, which grow as tests are added)
NOT_MEASURED: dict[tuple[str | None, str], str] = {
    ("143", "SIGTERM"): "the exit status of a process ended by SIGTERM (128 + 15)",
    ("130", "SIGTERM"): "the exit status of a process ended by Ctrl-C (128 + 2)",
    ("1", "MB is refused"): "a limit of the config reader (ilct.limits)",
    ("64", "128 channels"): "the ADM-S width, a setting of the architecture",
    ("1", "sits near 1"): "the adaptive loss is divided by its own (stopped) magnitude: near 1 by construction",
    (None, "SIGKILL at"): "what tests/test_faults.py does (the count of its kill instants), not a measurement",
    (None, "inside checkpoint writes"): "what tests/test_faults.py does, not a measurement",
    (None, "kinds of bad input"): "the count of tests/test_faults.py's bad-input cases",
    (None, "hostile or careless"): "the count of tests/test_hostile.py's cases (docs/reliability.md, every make test)",
    (None, "to the same rules with"): "the count of tests/test_closed_world.py's cases (docs/reliability.md)",
    (None, "test_loaders.py"): "the count of tests/test_loaders.py's cases",
    ("0", "u(e, 0, 1)"): "a formula's arguments",
    ("1", "u(e, 0, 1)"): "a formula's arguments",
    ("0.5", "two_step_m"): "the default of meanflow.two_step_m, a setting",
    ("3,926", "Noto Color"): "the number of emoji in the font package, a fact of the data",
    ("32", "latent channels at 1/8"): "TAEF2's latent width, a fact of its weights (NOTES.md)",
    ("50,000", "first 50,000 images"): "the reference size of an image folder (FOLDER_REFERENCE_N), a setting",
    ("240 s", "equal wall-clock"): "the wall-clock budget each row of the study was given, a setting",
}

NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
NUMBER = re.compile(
    rf"(?<![\w/.\-])(?P<num>{NUM})"  # not inside a name, a path or a longer number
    rf"(?:-(?P<hi>{NUM}))?"  # a range: 98-100 %
    r"(?P<unit>\s?%|x(?!\w)|\s(?:min|s|h|ms|dB)\b)?"
)
LINK = re.compile(r"(?:docs/|\(|/)?((?:results/)?[\w.-]+\.(?:md|json))\b")


def paragraphs(text: str) -> list[list[tuple[int, str]]]:
    """The README's prose in paragraphs of (line number, raw line): blank lines and table rows separate them, and
    so does a line that ends with `;` (the items of a long list); fenced code blocks are dropped."""
    out, cur, fenced = [], [], False
    for i, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        if not line.strip() or line.lstrip().startswith("|"):
            out.append(cur)
            cur = []
            if line.strip():
                out.append([(i, line)])
            continue
        cur.append((i, line))
        if line.rstrip().endswith(";"):
            out.append(cur)
            cur = []
    out.append(cur)
    return [p for p in out if p]


def prose(line: str) -> str:
    """A line without its inline code and link targets (the paths), the same length, so positions hold."""
    line = re.sub(r"`[^`]*`", lambda m: " " * len(m.group()), line)
    return re.sub(r"\]\([^)]*\)", lambda m: "]" + " " * (len(m.group()) - 1), line)


def value(s: str) -> float:
    return float(s.replace(",", ""))


def decimals(s: str) -> int:
    return len(s.split(".")[1]) if "." in s else 0


def set_aside(line: str, m: re.Match) -> bool:
    """The rules of the module docstring: a name, a shape, a compound, a date, a setting."""
    start, end = m.start("num"), m.end()
    after, before = line[end:], line[:start]
    num_end = m.end("hi") if m.group("hi") else m.end("num")
    unit = m.group("unit")
    if not unit and re.match(r"[A-Za-z_/]", line[num_end:num_end + 1]):
        return True  # 1M, 2D
    if re.match(r"\.\d", line[num_end:num_end + 2]):
        return True  # a dotted name: 127.0.0.1
    if re.match(r"x\d", line[num_end:num_end + 2]) or re.match(r"x\d", line[m.end("num"):m.end("num") + 2]):
        return True  # a shape: 8x8, 256x256
    if unit == "x" and "." not in m.group("num") + (m.group("hi") or ""):
        return True  # an integer multiple: 4x the demo's steps
    if re.match(r"-\d{2}-\d{2}", line[num_end:num_end + 6]) or (
            re.fullmatch(r"(19|20)\d\d", m.group("num")) and not unit):
        return True  # a date or a year
    if re.search(r"(=|<|>)\s*$", before) or re.match(r"\s*=", after):
        return True  # a setting: s1 = 640, (0 = all)
    if re.search(r"\b(?:" + "|".join(BEFORE_WORDS) + r")\s*$", before):
        return True  # s1 80, exit 2, issue 19
    if not unit and re.match(rf"(?:\s*(?:,|or|and|to)\s*(?:{NUM}))*\s*(?:" + "|".join(SETTING_WORDS) + r")\b", after):
        return True  # 3,000 steps; 1 or 2 evaluations
    if re.search(r"\.\.$", before) or re.match(r"\.\.", line[num_end:]):
        return True  # a range of values: 0..255
    if not unit and re.match(r"-(?:\w|\s)", line[num_end:num_end + 2]):
        return True  # a compound: 2-core, 1-step, 1- and 2-step, 256-d
    return False


def kind_of(line: str, m: re.Match, paragraph_text: str, offset: int) -> str | None:
    """The unit, else the nearest metric word before the number in its sentence."""
    unit = (m.group("unit") or "").strip()
    if unit and unit != "%":
        return unit
    before = paragraph_text[:offset + m.start()]
    sentence = re.split(r"(?<![\d.])\.\s", before)[-1] if before else ""
    best, where = None, -1
    for word in METRIC_WORDS:
        i = sentence.rfind(word)
        if i > where:
            best, where = word, i
    return f"%|{best}" if unit == "%" and best else (unit or best)


def cited_results(raw: str) -> set[str]:
    """The results files a paragraph cites: named in it, or named by a docs/*.md it links to."""
    out = set()
    for name in LINK.findall(raw):
        if name.endswith(".json") and (RESULTS / Path(name).name).is_file():
            out.add(Path(name).name)
        elif name.endswith(".md") and (DOCS / Path(name).name).is_file():
            out |= {Path(n).name for n in LINK.findall((DOCS / Path(name).name).read_text())
                    if n.endswith(".json") and (RESULTS / Path(n).name).is_file()}
    return out


def figures(text: str) -> list[dict]:
    """Every figure of the README: its line, number, unit or kind, the results files its paragraph cites, and
    the reason where it is listed as published or not measured."""
    out = []
    for para in paragraphs(text):
        raw = "\n".join(line for _, line in para)
        cited = cited_results(raw)
        flat = "\n".join(prose(line) for _, line in para)
        offset = 0
        for lineno, line in para:
            clean = prose(line)
            taken_until = 0
            for m in NUMBER.finditer(clean):
                if m.start() < taken_until or set_aside(clean, m):
                    continue
                unit = (m.group("unit") or "").strip()
                kind = kind_of(clean, m, flat, offset)
                seconds = None
                if unit == "min":  # "10 min 21 s": one figure
                    s = re.match(r"\s*(\d+)\s*s\b", clean[m.end():])
                    seconds = value(m.group("num")) * 60 + (int(s.group(1)) if s else 0)
                    taken_until = m.end() + (s.end() if s else 0)
                for num in filter(None, (m.group("num"), m.group("hi"))):
                    key = f"{num} {unit}".strip()
                    listed = next((why for (n, phrase), why in {**PUBLISHED, **NOT_MEASURED}.items()
                                   if n in (key, None) and phrase in line), None)
                    out.append({"line": lineno, "text": line.strip(), "num": num, "unit": unit, "kind": kind,
                                "cited": cited, "listed": listed, "seconds": seconds})
            offset += len(clean) + 1
    return out


def leaves(obj, path: str, out: list[tuple[str, float]], ratios: list[tuple[str, float]]) -> None:
    """Every number of a JSON document with the path of keys down to it; and the ratios a figure `Nx` may be:
    of a value over its chance level, keys X_acc and X_chance (or near and chance_near) of one object."""
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        out.append((path, float(obj)))
    elif isinstance(obj, dict):
        own = {k: float(v) for k, v in obj.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for k, v in own.items():
            for chance in ([k.replace("_acc", "_chance")] if k.endswith("_acc") else
                           [f"chance_{k}"] if k in ("near", "exact") else []):
                if own.get(chance):
                    ratios.append((f"{path}.{k}/{chance}", v / own[chance]))
        for k, v in obj.items():
            leaves(v, f"{path}.{k}", out, ratios)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            leaves(v, f"{path}[{i}]", out, ratios)


class Results:
    """The numbers of the results files, read when a figure's paragraph cites them: sorted (value, key path)."""

    def __init__(self, folder: Path = RESULTS):
        self.folder, self.files = folder, {}

    def tables(self, name: str) -> tuple[list[tuple[float, str]], list[tuple[float, str]]]:
        if name not in self.files:
            out, ratios = [], []
            leaves(json.loads((self.folder / name).read_text()), "", out, ratios)
            self.files[name] = sorted((v, p) for p, v in out), sorted((v, p) for p, v in ratios)
        return self.files[name]

    @staticmethod
    def near(table: list[tuple[float, str]], lo: float, hi: float, key: str) -> str | None:
        i = bisect.bisect_left(table, (lo, ""))
        while i < len(table) and table[i][0] <= hi:
            if re.search(key, table[i][1], re.IGNORECASE):
                return table[i][1]
            i += 1
        return None

    def found(self, fig: dict) -> str | None:
        """Where a number of a cited file, under a key of the figure's kind, rounds to it as printed (file:path)."""
        kind = fig["kind"]
        if kind and kind.startswith("%|"):  # a percentage in a sentence with a metric word: either key
            kind, key = "%", UNIT_KEYS["%"] + "|" + METRIC_WORDS[kind[2:]]
        else:
            key = METRIC_WORDS.get(kind) or UNIT_KEYS.get(kind)
        if key is None:
            return None
        v, half = value(fig["num"]), 0.5 * 10 ** -decimals(fig["num"])
        if fig["seconds"] is not None:
            ranges = [(fig["seconds"] - 0.5, fig["seconds"] + 0.5)]
        else:
            ranges = [(v - half, v + half)]
            scale = {"%": 0.01, "min": 60, "h": 3600}.get(kind)
            if scale:
                ranges.append(((v - half) * scale, (v + half) * scale))
        for name in sorted(fig["cited"]):
            values, ratios = self.tables(name)
            for lo, hi in ranges:
                if where := self.near(values, lo, hi, key):
                    return f"{name}:{where}"
            if kind == "x" and (where := self.near(ratios, v - half, v + half, "")):
                return f"{name}:{where}"
        return None


def unmatched(text: str, results: Results | None = None) -> list[str]:
    """The README's figures found in no results file their paragraph cites, one line each."""
    results = results or Results()
    missing = []
    for f in figures(text):
        if f["listed"] or results.found(f):
            continue
        why = "no unit or metric word before it" if f["kind"] is None else (
            f"no {f['kind']} figure of that value in " + (", ".join(sorted(f["cited"])) or "any cited results file"))
        missing.append(f"README line {f['line']}: {f['num']}{' ' + f['unit'] if f['unit'] else ''} ({why}): "
                       f"{f['text'][:140]}")
    return missing


def test_every_figure_in_the_readme_is_in_a_results_file_it_cites():
    missing = unmatched((ROOT / "README.md").read_text())
    assert not missing, ("figures without a results file (measure them, cite the file, or list why they are not "
                         "measurements):\n" + "\n".join(missing))


def test_a_made_up_figure_is_caught_and_a_sourced_one_is_not():
    """The check can fail: a FID, a time and a percentage with no source are reported; the demo's FID, cited, is not."""
    cited = "The demo scored FID 914 at one step ([`docs/demo.md`](docs/demo.md)).\n"
    assert unmatched(cited) == []
    made_up = ("The demo scored FID 4,321.7 at one step in 12,345 s, recall 87.65 % "
               "([`docs/demo.md`](docs/demo.md)).\n")
    missing = unmatched(made_up)
    assert [m.split(":")[1].split("(")[0].strip() for m in missing] == ["4,321.7", "12,345 s", "87.65 %"], missing
    uncited = "The demo scored FID 914 at one step.\n"  # the right number, but no results file named: caught
    assert len(unmatched(uncited)) == 1
    no_kind = "Its samples scored 937 ([`docs/demo.md`](docs/demo.md)).\n"  # a bare number says nothing: caught
    assert "no unit or metric word" in unmatched(no_kind)[0]
    code = "```bash\nilct train --steps 4321\n```\nWith `--set train.total_steps=98765`, s1 = 640, 3,000 steps.\n"
    assert unmatched(code) == []  # commands, settings and step counts are no figures


def test_every_results_file_names_its_command_machine_and_date():
    bad = []
    for path in sorted(RESULTS.rglob("*.json")):
        data = json.loads(path.read_text())
        for field in ("command", "machine", "date"):
            v = data.get(field) if isinstance(data, dict) else None
            if not isinstance(v, str) or not v.strip() or re.search(r"not recorded|unknown", v, re.IGNORECASE):
                bad.append(f"{path.name}: {field} = {v!r}")
    assert not bad, "results files without their command, machine or date:\n" + "\n".join(bad)
