"""Reproducibility and property-based tests.

- Same seed with two streaming loader workers gives identical weights (and the same as the
  cached path); another seed gives other weights.
- Config overrides: any valid value of any key, written as a user would on the command line,
  round-trips through dump/load; any invalid one raises ConfigError naming the key.
- Split manifests: any sample list, fractions and seed give a stratified, deterministic
  partition, and a manifest survives save/load; a corrupted one (not JSON, a key missing or of
  the wrong type, a bad item, a label out of range, ...) is a DataError naming the file and
  what is wrong, and any JSON written anywhere in one loads or is a DataError, nothing else.
"""

from __future__ import annotations

import json
import keyword
import math
import tempfile
import typing
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any, Literal, get_args, get_origin

import annotated_types
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagefit.config import Config, config_from_dict, dump_config, load_config
from imagefit.data.splits import SPLITS, SplitManifest, stratified_split
from imagefit.errors import ConfigError, DataError
from imagefit.train.fit import fit

from conftest import write_pattern_folder
from faultkit import checkpoint, run_tree

pytestmark = pytest.mark.faults

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- same seed, same weights -------------------------------------------------------------------


def test_streaming_with_two_workers_is_reproducible(tmp_path: Path) -> None:
    root = write_pattern_folder(tmp_path / "p")
    stream = {"cache": "never", "num_workers": 2}

    def weights(name: str, seed: int, data: dict) -> dict:
        tree = run_tree(
            root, tmp_path / name, tmp_path / "cache", data=data, train={"epochs": 2, "seed": seed}
        )
        return checkpoint(fit(config_from_dict(tree)).run_dir / "last.pt")["model"]

    a, b = weights("a", 0, stream), weights("b", 0, stream)
    other, cached = weights("c", 1, stream), weights("d", 0, {})
    assert all(a[k].equal(b[k]) for k in a)
    assert all(a[k].equal(cached[k]) for k in a)  # workers and the cache see the same pixels
    assert not all(a[k].equal(other[k]) for k in a)


# --- config overrides --------------------------------------------------------------------------

FIELDS = [
    (f"{section}.{name}", info)
    for section, section_info in Config.model_fields.items()
    for name, info in section_info.annotation.model_fields.items()
]
SECTIONS = list(Config.model_fields)


def _bounds(info: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in info.metadata:
        for name in ("ge", "gt", "le", "lt"):
            if isinstance(item, getattr(annotated_types, name.capitalize())):
                out[name] = getattr(item, name)
    return out


def _base(annotation: Any) -> tuple[Any, bool]:
    """(annotation without None, whether None is allowed)."""
    if get_origin(annotation) in (typing.Union, __import__("types").UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return args[0], True
    return annotation, False


def _floats(b: dict[str, Any]) -> st.SearchStrategy[float]:
    return st.floats(
        min_value=b.get("ge", b.get("gt")),
        max_value=b.get("le", b.get("lt")),
        exclude_min="gt" in b,
        exclude_max="lt" in b,
        allow_nan=False,
        allow_infinity=False,
    )


TEXT = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Co", "Cn", "Zl", "Zp")),
    max_size=20,
)


# Text fields checked against a closed set when the config loads: their valid values.
CHECKED_TEXT = {
    "model.name": st.sampled_from(
        ["simple_cnn", "hog_svm", "resnet18", "efficientnet_b0", "resnet50.a1_in1k"]
    ),
    "model.init": st.one_of(st.just("scratch"), TEXT.filter(lambda s: not s.startswith("hub:"))),
    "train.device": st.sampled_from(["auto", "cpu", "cuda", "cuda:1", "mps"]),
}


def valid_values(key: str, info: Any) -> st.SearchStrategy[Any]:
    annotation, optional = _base(info.annotation)
    b = _bounds(info)
    if get_origin(annotation) is Literal:
        values = st.sampled_from(get_args(annotation))
    elif annotation is bool:
        values = st.booleans()
    elif annotation is int:
        low = b.get("ge", b["gt"] + 1 if "gt" in b else -(10**12))
        high = b.get("le", b["lt"] - 1 if "lt" in b else 10**12)
        values = st.integers(low, high)
    elif annotation is float:
        values = _floats(b)
    elif get_origin(annotation) is tuple:
        values = st.tuples(*(_floats({}) for _ in get_args(annotation)))
    elif key in CHECKED_TEXT:
        values = CHECKED_TEXT[key]
    elif annotation is str:
        values = TEXT
    else:  # pragma: no cover - a new field type: teach this test about it
        raise AssertionError(f"{key}: no strategy for {annotation}")
    return st.one_of(st.none(), values) if optional else values


def render(value: Any) -> str:
    """The value as a user types it after ``--set key=``: plain where YAML reads it back as
    that value (numbers and words for a text field included), quoted where it would not."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(render(v) for v in value) + "]"
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = None
    plain = parsed == value or (isinstance(parsed, bool | int | float) and value == value.strip())
    return value if plain and value else json.dumps(value, ensure_ascii=False)


@PROPERTY
@given(st.data())
def test_any_valid_overrides_round_trip(data: st.DataObject) -> None:
    chosen = data.draw(
        st.lists(st.sampled_from(FIELDS), min_size=1, max_size=6, unique_by=lambda f: f[0])
    )
    values = {key: data.draw(valid_values(key, info), label=key) for key, info in chosen}
    cfg = load_config(None, [f"{key}={render(value)}" for key, value in values.items()])
    for key, value in values.items():
        section, name = key.split(".")
        assert getattr(getattr(cfg, section), name) == value, key
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.yaml"
        path.write_text(dump_config(cfg), encoding="utf-8")
        assert load_config(path) == cfg


CHOICES = [
    (key, choice)
    for key, info in FIELDS
    if get_origin(_base(info.annotation)[0]) is Literal
    for choice in get_args(_base(info.annotation)[0])
]


@pytest.mark.parametrize(("key", "choice"), CHOICES, ids=[f"{k}={c}" for k, c in CHOICES])
def test_every_choice_of_every_word_field_loads(key: str, choice: str, tmp_path: Path) -> None:
    """Exhaustive where the property test samples: ``train.amp=off`` used to be read as False
    and refused, on the command line and in YAML files alike."""
    section, name = key.split(".")
    assert getattr(getattr(load_config(None, [f"{key}={choice}"]), section), name) == choice
    path = tmp_path / "c.yaml"
    path.write_text(f"{section}:\n  {name}: {choice}\n")
    assert getattr(getattr(load_config(path), section), name) == choice


IDENT = st.from_regex(r"[a-z_][a-z0-9_]{0,12}", fullmatch=True).filter(
    lambda s: not keyword.iskeyword(s)
)


YAML_WORDS = ("null", "yes", "no", "on", "off", "true", "false")  # YAML reads these as non-text


def _out_of_range(annotation: Any, b: dict[str, Any]) -> list[st.SearchStrategy[str]]:
    """Numbers just past each bound of a numeric field, as override text."""
    out = []
    if "ge" in b or "gt" in b:
        low, inclusive = b.get("ge", b.get("gt")), "ge" in b
        if annotation is int:
            below = st.integers(-(10**12), math.ceil(low) - (1 if inclusive else 0))
        else:
            below = st.floats(-1e12, low, exclude_max=inclusive)
        out.append(below.map(repr))
    if "le" in b or "lt" in b:
        high, inclusive = b.get("le", b.get("lt")), "le" in b
        if annotation is int:
            above = st.integers(math.floor(high) + (1 if inclusive else 0), 10**20)
        else:
            above = st.floats(high, 1e300, exclude_min=inclusive)
        out.append(above.map(repr))
    return out


def invalid_overrides() -> st.SearchStrategy[tuple[str, str]]:
    """(key the error must name, override text)."""
    known = {key for key, _ in FIELDS}
    unknown_key = st.builds(lambda s, n: f"{s}.{n}", st.sampled_from(SECTIONS), IDENT)
    unknown_section = IDENT.filter(lambda s: s not in SECTIONS)
    cases = [
        unknown_key.filter(lambda k: k not in known).map(lambda k: (k, f"{k}=1")),
        unknown_section.map(lambda s: (s, f"{s}.x=1")),
    ]
    for key, info in FIELDS:
        annotation, _ = _base(info.annotation)
        wrong: list[st.SearchStrategy[str]] = [st.just("[[1], {a: 2}]")]  # fits no field
        if annotation in (int, float):
            wrong += [
                st.sampled_from(["abc", "1.5.3", "{}"]),
                *_out_of_range(annotation, _bounds(info)),
            ]
        elif get_origin(annotation) is Literal:
            choices = {str(c) for c in get_args(annotation)} | set(YAML_WORDS)
            words = st.from_regex(r"[a-z]{1,10}", fullmatch=True)
            wrong.append(words.filter(lambda s, c=choices: s not in c))
        elif annotation is bool:
            wrong.append(st.sampled_from(["maybe", "2", "[true]"]))
        elif get_origin(annotation) is tuple:
            wrong.append(st.sampled_from(["1", "[1, 2, 3, 4, 5]", "[a, b]"]))
        elif key in ("model.name", "train.device"):  # no model or device ends in "qz9"
            wrong.append(st.from_regex(r"[a-z]{1,10}qz9", fullmatch=True))
        elif key == "model.init":
            wrong.append(st.from_regex(r"hub:[a-z]{1,10}qz9", fullmatch=True))
        cases.append(st.one_of(wrong).map(lambda text, k=key: (k, f"{k}={text}")))
    return st.one_of(cases)


@PROPERTY
@given(invalid_overrides())
def test_any_invalid_override_names_its_key(case: tuple[str, str]) -> None:
    key, override = case
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert key in str(info.value)


# --- split manifests ---------------------------------------------------------------------------

NAME = st.text(
    st.characters(
        codec="utf-8", exclude_categories=("Cc", "Cs", "Co", "Cn"), exclude_characters="/\\"
    ),
    min_size=1,
    max_size=12,
).filter(lambda s: s not in (".", ".."))


@st.composite
def sample_lists(draw: st.DrawFn) -> tuple[Path, list[str], list[tuple[Path, int]]]:
    root = Path("/data") / draw(NAME)
    classes = draw(st.lists(NAME, min_size=1, max_size=5, unique=True))
    samples = []
    for label, name in enumerate(classes):
        for file in draw(st.lists(NAME, min_size=1, max_size=25)):  # duplicates allowed
            samples.append((root / name / file, label))
    return root, classes, draw(st.permutations(samples))


FRACTIONS = st.tuples(st.floats(0.01, 0.6), st.floats(0.0, 0.6)).filter(lambda f: sum(f) < 0.95)
SEEDS = st.integers(0, 2**63 - 1)


@PROPERTY
@given(sample_lists(), FRACTIONS, SEEDS)
def test_stratified_split_is_a_deterministic_stratified_partition(
    case, fractions, seed: int
) -> None:
    _, classes, samples = case
    val, test = fractions
    split = stratified_split(samples, {"train": 1 - val - test, "val": val, "test": test}, seed)
    assert split == stratified_split(
        list(samples), {"train": 1 - val - test, "val": val, "test": test}, seed
    )
    assert Counter(s for part in split.values() for s in part) == Counter(samples)  # a partition
    for label in range(len(classes)):
        n = sum(1 for _, y in samples if y == label)
        count = {name: sum(1 for _, y in part if y == label) for name, part in split.items()}
        assert count["train"] >= 1  # every class can be learned
        wanted = {"val": round(n * val), "test": round(n * test)}
        if wanted["val"] + wanted["test"] <= n - 1:  # room for all: exactly the class's share
            assert (count["val"], count["test"]) == (wanted["val"], wanted["test"])
        else:  # a tiny class: never more than its share, train keeps one
            assert count["val"] <= wanted["val"] and count["test"] <= wanted["test"]


@PROPERTY
@given(sample_lists(), FRACTIONS, SEEDS, NAME)
def test_manifest_save_load_round_trips(case, fractions, seed: int, moved: str) -> None:
    root, classes, samples = case
    val, test = fractions
    fr = {"train": 1 - val - test, "val": val, "test": test}
    manifest = SplitManifest(
        root, classes, stratified_split(samples, fr, seed), "stratified", seed, fr
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "split.json"
        manifest.save(path)
        again = SplitManifest.load(path)
        relocated = SplitManifest.load(path, root=Path("/elsewhere") / moved)
    assert (again.root, again.classes, again.splits, again.layout, again.seed, again.fractions) == (
        manifest.root,
        manifest.classes,
        manifest.splits,
        manifest.layout,
        manifest.seed,
        manifest.fractions,
    )
    assert {
        k: [(p.relative_to(relocated.root), y) for p, y in v] for k, v in relocated.splits.items()
    } == {k: [(p.relative_to(root), y) for p, y in v] for k, v in manifest.splits.items()}


# --- invalid split manifests -------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=8,
)
REQUIRED = ("root", "classes", "splits", "layout")
CORRUPTIONS = (
    "truncated",
    "not utf-8",
    "not an object",
    "missing key",
    "wrong type",
    "duplicate class",
    "split not a list",
    "bad item",
    "label out of range",
    "path not relative",
    "unknown split",
    "no train",
)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _numbers(value: Any) -> bool:
    """An object of numbers: what ``fractions`` may hold besides null."""
    return isinstance(value, dict) and all(_is_number(x) for x in value.values())


def _is_pair(item: Any) -> bool:
    return (
        isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and _is_int(item[1])
    )


@st.composite
def manifest_docs(draw: st.DrawFn) -> dict:
    """A valid manifest as SplitManifest.save writes it."""
    root, classes, samples = draw(sample_lists())
    fractions = {"train": 0.6, "val": 0.2, "test": 0.2}
    splits = stratified_split(samples, fractions, draw(SEEDS))
    return SplitManifest(root, classes, splits, "stratified", 7, fractions).to_json()


def _wrong(key: str) -> st.SearchStrategy[Any]:
    """JSON values that ``key`` of a manifest must not hold."""
    if key in ("root", "layout"):
        return JSON.filter(lambda v: not isinstance(v, str))
    if key == "splits":
        return JSON.filter(lambda v: not isinstance(v, dict))
    if key == "seed":
        return JSON.filter(lambda v: v is not None and not _is_int(v))
    if key == "fractions":
        return JSON.filter(lambda v: v is not None and not _numbers(v))
    not_a_name = JSON.filter(lambda v: not isinstance(v, str))  # key == "classes"
    with_a_non_name = st.tuples(st.lists(NAME, max_size=2), not_a_name, st.lists(NAME, max_size=2))
    return st.one_of(
        JSON.filter(lambda v: not isinstance(v, list)),
        with_a_non_name.map(lambda t: [*t[0], t[1], *t[2]]),
    )


@st.composite
def corrupted_manifests(draw: st.DrawFn) -> tuple[str | bytes, str]:
    """(file content, text the error must contain): a valid manifest with one thing broken."""
    doc = draw(manifest_docs())
    kind = draw(st.sampled_from(CORRUPTIONS))
    name = draw(st.sampled_from(sorted(doc["splits"])))
    items = doc["splits"][name]
    position = draw(st.integers(0, len(items)))
    if kind == "truncated":  # any proper prefix of a JSON object is not JSON
        text = json.dumps(doc)
        return text[: draw(st.integers(0, len(text) - 1))], "not a valid split manifest"
    if kind == "not utf-8":
        return b"\xff\xfe" + draw(st.binary(max_size=40)), "not a valid split manifest"
    if kind == "not an object":
        return json.dumps(draw(JSON.filter(lambda v: not isinstance(v, dict)))), "JSON object"
    expect = ""
    if kind == "missing key":
        key = draw(st.sampled_from(REQUIRED))
        del doc[key]
        expect = f"'{key}'"
    elif kind == "wrong type":
        key = draw(st.sampled_from([*REQUIRED, "seed", "fractions"]))
        doc[key] = draw(_wrong(key))
        expect = f"'{key}'"
    elif kind == "duplicate class":
        doc["classes"].append(draw(st.sampled_from(doc["classes"])))
        expect = "'classes'"
    elif kind == "split not a list":
        doc["splits"][name] = draw(JSON.filter(lambda v: not isinstance(v, list)))
        expect = f"split '{name}'"
    elif kind == "bad item":
        items.insert(position, draw(JSON.filter(lambda v: not _is_pair(v))))
        expect = f"split '{name}' item {position}"
    elif kind == "label out of range":
        count = len(doc["classes"])
        label = draw(st.integers(max_value=-1) | st.integers(min_value=count))
        items.insert(position, [draw(NAME), label])
        expect = f"split '{name}' has labels outside the class list"
    elif kind == "path not relative":
        items.insert(position, [draw(st.just("") | NAME.map(lambda n: f"/{n}")), 0])
        expect = f"split '{name}' item {position}: the path must be relative"
    elif kind == "unknown split":
        extra = draw(
            st.from_regex(r"[a-z]{1,10}", fullmatch=True).filter(lambda s: s not in SPLITS)
        )
        doc["splits"][extra] = []
        expect = "unknown split"
    else:  # no train
        del doc["splits"]["train"]
        expect = "'train'"
    return json.dumps(doc), expect


def _load_written(content: str | bytes, **kwargs: Any) -> tuple[Path, Any]:
    """(path, the manifest or the exception) of SplitManifest.load on a file of ``content``."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "split.json"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        try:
            return path, SplitManifest.load(path, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the tests look at which exception it is
            return path, exc


@PROPERTY
@given(corrupted_manifests())
def test_any_invalid_manifest_is_a_data_error_naming_the_file(
    case: tuple[str | bytes, str],
) -> None:
    content, expect = case
    path, outcome = _load_written(content)
    assert isinstance(outcome, DataError), f"{type(outcome).__name__}: {outcome}"
    assert str(path) in str(outcome) and expect in str(outcome), str(outcome)


@st.composite
def scribbled_manifests(draw: st.DrawFn) -> str:
    """A valid manifest with any JSON value written at one place of it."""
    doc, value = draw(manifest_docs()), draw(JSON)
    place = draw(st.sampled_from(["key", "split", "item", "path", "label"]))
    name = draw(st.sampled_from(sorted(doc["splits"])))
    items = doc["splits"][name]
    if place == "key":
        doc[draw(st.sampled_from([*doc, "version", "root", "counts"]) | st.text(max_size=6))] = (
            value
        )
    elif place == "split":
        doc["splits"][draw(st.sampled_from([*SPLITS, name]) | st.text(max_size=6))] = value
    elif items:
        item = draw(st.sampled_from(items))
        if place == "item":
            items[items.index(item)] = value
        else:
            item[0 if place == "path" else 1] = value
    return json.dumps(doc)


@PROPERTY
@given(scribbled_manifests(), st.booleans())
def test_any_json_anywhere_loads_and_round_trips_or_is_a_data_error(
    content: str, relocate: bool
) -> None:
    path, outcome = _load_written(content, root="/moved" if relocate else None)
    if not isinstance(outcome, SplitManifest):
        assert isinstance(outcome, DataError), f"{type(outcome).__name__}: {outcome}"
        assert str(path) in str(outcome)
        return
    # still a manifest: then it is the one written, and saves back as it was read
    doc, again = json.loads(content), outcome.to_json()
    for key in ("classes", "layout", "seed", "fractions"):
        assert json.dumps(again[key]) == json.dumps(doc.get(key)), key
    assert again["splits"] == {
        name: [[PurePosixPath(rel).as_posix(), label] for rel, label in items]
        for name, items in doc["splits"].items()
    }
    # a run stores data paths absolute: a relative root is written back resolved
    assert again["root"] == ("/moved" if relocate else str(Path(doc["root"]).absolute()))


@pytest.mark.parametrize(
    "content",
    [
        "[" * 100_000 + "]" * 100_000,  # nested past the recursion limit
        '{"root": "/d", "layout": "x", "classes": ["a"], "splits": {"train": [["f", 1e400]]}}',
        '{"root": "/d", "layout": "x", "classes": "ab", "splits": {"train": []}}',
        '{"root": "/d", "layout": "x", "classes": ["a"], "splits": {"train": {"f0": 0}}}',
        '{"root": "/d", "layout": "x", "classes": ["a"], "splits": []}',
    ],
    ids=["deep", "infinite-label", "classes-a-string", "split-an-object", "splits-a-list"],
)
def test_manifests_that_used_to_leak_or_load(content: str) -> None:
    """These raised RecursionError, OverflowError or AttributeError, or loaded as nonsense
    (the letters of a string as classes, the characters of a key as [path, label])."""
    path, outcome = _load_written(content)
    assert isinstance(outcome, DataError) and str(path) in str(outcome), repr(outcome)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.seed=-1", "train.seed"),
        ("data.split_seed=-3", "data.split_seed"),
        ("train.seed=18446744073709551616", "train.seed"),
    ],
)
def test_seeds_numpy_or_torch_cannot_take_are_config_errors(override: str, key: str) -> None:
    """These used to pass validation and crash deep in numpy/torch with a bare ValueError."""
    with pytest.raises(ConfigError, match=key):
        load_config(None, [override])


def test_text_fields_take_numbers_and_words_as_written() -> None:
    cfg = load_config(
        None,
        ["output.name=2024", "track.mlflow_experiment=yes", "model.init=1e3", "data.root=null"],
    )
    assert (cfg.output.name, cfg.track.mlflow_experiment, cfg.model.init, cfg.data.root) == (
        "2024",
        "yes",
        "1e3",
        None,
    )
