"""params.yaml loads into frozen dataclasses; every bad key or value fails at load time and names the key."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from peftqa.errors import ParamsError
from peftqa.params import Params, PeftParams, load_params, parse_params

PARAMS_YAML = Path(__file__).resolve().parents[1] / "params.yaml"
KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_]\w*):(?P<rest>.*)$")


def test_params_yaml_loads():
    params = load_params(PARAMS_YAML)
    assert isinstance(params, Params)
    assert params.prepare.labels == ("yes", "no")
    assert params.stats.baseline in params.methods


def _documented_keys(lines: list[str]) -> dict[str, bool]:
    """{dotted key: documented?} where a key is documented by an inline comment, a full-line comment right above
    it, or (for the children of a mapping, e.g. target_modules.encoder) its parent's inline comment.
    A section header (a key whose value is a nested mapping) needs no comment of its own."""
    result, stack = {}, []  # stack: (indent, key, has_inline_comment) of the enclosing mappings
    previous = ""
    for number, line in enumerate(lines):
        match = KEY_LINE.match(line)
        if not match:
            if line.strip():
                previous = line
            continue
        indent, key = len(match["indent"]), match["key"]
        rest = re.sub(r"\"(?:[^\"\\]|\\.)*\"|'[^']*'", '""', match["rest"])  # '#' inside quotes is not a comment
        value, _, comment = rest.partition("#")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        following = next((n for n in lines[number + 1:] if n.strip() and not n.lstrip().startswith("#")), "")
        is_header = (not value.strip() and KEY_LINE.match(following)
                     and len(following) - len(following.lstrip()) > indent)
        documented = bool(comment.strip()) or previous.lstrip().startswith("#") or bool(stack and stack[-1][2])
        if not is_header:
            result[".".join([k for _, k, _ in stack] + [key])] = documented
        stack.append((indent, key, bool(comment.strip())))
        previous = line
    return result


def test_comment_rule_parser_on_a_sample():
    sample = ["top:", "  a: 1  # why a", "  # why b", "  b: 2", "  c: 3", "  d:  # per family", "    x: [1]",
              "  s: \"# not a comment\""]
    assert _documented_keys(sample) == {"top.a": True, "top.b": True, "top.c": False, "top.d.x": True, "top.s": False}


def test_every_params_key_has_a_comment():
    keys = _documented_keys(PARAMS_YAML.read_text(encoding="utf-8").splitlines())
    assert len(keys) > 40  # the parser found the leaf keys
    undocumented = [key for key, ok in keys.items() if not ok]
    assert not undocumented, f"params.yaml keys without a comment (inline or on the line above): {undocumented}"


@pytest.mark.parametrize("dotted", ["surprise", "train.lr_typo", "peft.lora.rank", "peft.unregistered"])
def test_unknown_key_is_named(params_data, dotted):
    with pytest.raises(ParamsError, match=re.escape(f"unknown key '{dotted}'")):
        parse_params(params_data({dotted: 1}))


@pytest.mark.parametrize("dotted, value", [
    ("peft.lora.lr", -1),
    ("peft.prompt_tuning.lr", 0),
    ("train.batch_size", 0),
    ("train.epochs", "four"),
    ("train.epochs", 2.5),
    ("train.gradient_checkpointing", "yes"),  # a bare yes is a string here, not true
    ("train.checkpoint_every_steps", -1),
    ("train.checkpoint_every_steps", 2.5),
    ("prepare.protocol", "foo"),
    ("prepare.labels", ["yes", "perhaps"]),
    ("prepare.labels", ["yes"]),
    ("prepare.val_fraction", 1.5),
    ("prepare.limit", -5),
    ("fetch.sha256", "abc"),
    ("model.template", "Question: {question}"),
    ("methods", ["base", "adapters"]),
    ("methods", ["base", "base"]),
    ("stats.baseline", "ia3"),  # not in methods
    ("stats.confidence", 1.5),
])
def test_bad_value_is_named(params_data, dotted, value):
    with pytest.raises(ParamsError) as err:
        parse_params(params_data({dotted: value}))
    assert f"'{dotted}'" in str(err.value)


def test_prefix_tuning_with_gradient_checkpointing_is_refused(params_data):
    data = params_data({"train.gradient_checkpointing": True, "methods": ["base", "prefix_tuning"]})
    with pytest.raises(ParamsError, match="train.gradient_checkpointing.*prefix"):
        parse_params(data)
    data["methods"] = ["base", "lora"]
    assert parse_params(data).train.gradient_checkpointing is True


def test_step_checkpoints_without_epoch_checkpoints_are_refused(params_data):
    data = params_data({"train.checkpoint_every_steps": 50, "train.checkpoint_every_epoch": False})
    with pytest.raises(ParamsError, match="train.checkpoint_every_steps.*checkpoint_every_epoch: true"):
        parse_params(data)
    data["train"]["checkpoint_every_epoch"] = True
    assert parse_params(data).train.checkpoint_every_steps == 50


def test_missing_section_and_wrong_top_level(params_data):
    data = params_data()
    del data["fetch"]
    with pytest.raises(ParamsError, match="incomplete"):
        parse_params(data)
    with pytest.raises(ParamsError, match="mapping"):
        parse_params(["fetch"])


@pytest.mark.parametrize("text, match", [("prepare: [unclosed\n", "not valid YAML"), (None, "not found")])
def test_unreadable_file(tmp_path, text, match):
    path = tmp_path / "params.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ParamsError, match=match):
        load_params(path)


def test_yes_no_labels_stay_strings(tmp_path):
    text = PARAMS_YAML.read_text(encoding="utf-8")
    text = re.sub(r"labels: \[yes, no\]", "labels: [yes, no, maybe]", text, count=1)
    assert "labels: [yes, no, maybe]" in text
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    assert load_params(path).prepare.labels == ("yes", "no", "maybe")
    path.write_text(text.replace("gradient_checkpointing: false", "gradient_checkpointing: no"), encoding="utf-8")
    with pytest.raises(ParamsError, match="train.gradient_checkpointing"):  # 'no' is not silently False
        load_params(path)


def _dataclass_instances(obj):
    yield obj
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if dataclasses.is_dataclass(value):
            yield from _dataclass_instances(value)
        if isinstance(value, PeftParams):  # a mapping of the registered methods' knobs
            for knobs in value.values():
                yield from _dataclass_instances(knobs)


def test_every_section_is_frozen():
    params = load_params(PARAMS_YAML)
    instances = list(_dataclass_instances(params))
    assert len(instances) > 10
    for obj in instances:
        name = dataclasses.fields(obj)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, name, getattr(obj, name))
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.peft.lora = params.peft.lora


def test_params_yaml_holds_the_val_chosen_row_of_every_committed_sweep_table():
    """Issue 12's rule: params.yaml carries, for each table of the committed grid, the row its ablation CSV marks
    `chosen` (by val macro-F1); changing a default without re-running the sweep, or picking on test, fails here."""
    import pandas as pd
    import yaml

    from peftqa.cli.sweep import GRID_FILE, load_grid, lookup_dotted
    from peftqa.files import project_root

    root = project_root()
    grid = load_grid(root / GRID_FILE)
    params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    for table, axes in grid.items():
        csv = root / GRID_FILE.parent / f"{table}.csv"
        assert csv.is_file(), f"{csv}: the sweep table of grid entry '{table}' is not committed (make ablation)"
        frame = pd.read_csv(csv)
        chosen = frame[frame["chosen"]]
        assert len(chosen) == 1, f"{csv}: {len(chosen)} chosen rows"
        assert chosen["val_macro_f1"].iloc[0] == frame["val_macro_f1"].max(), f"{csv}: chosen is not the val best"
        for key in axes:
            value = chosen[key].iloc[0]
            value = value.item() if hasattr(value, "item") else value
            assert lookup_dotted(params, key) == value, f"params.yaml {key} = {lookup_dotted(params, key)!r}, but " \
                                                        f"{csv.name} chose {value!r}"
