"""Class names that cannot survive labels.txt and the generated code are refused before training; the rest
are escaped wherever they are written (Swift, Kotlin, Markdown)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import make_class_folder

from trainer.data.class_names import ClassNameError
from trainer.data.sources.folder import index_folder
from trainer.export.handoff.escape import kotlin_string, markdown_text, swift_string
from trainer.export.handoff.updatable_swift import swift_updatable

ACCEPTED = [
    'say "hi"',
    "back\\slash",
    "$(rm -rf x)",
    "${x}",
    "🐱 cat",
    "x" * 200,
    "_background",
    "# <i>x & y",
]
REFUSED = {
    "new\nline": "'\\n'",
    "carriage\rreturn": "'\\r'",
    "tab\there": "'\\t'",
    " ": "only whitespace",
    "trailing ": "leading or trailing whitespace",
    "-rf": "starts with '-'",
}


def test_newline_cr_tab_space_and_dash_names_are_refused_with_folder_and_rule(tmp_path):
    """Defect: a newline in a class name gave labels.txt one line too many, shifting every later label."""
    for bad, why in REFUSED.items():
        root = tmp_path / str(len(why)) / "photos"
        make_class_folder(root, {"ok": 2, bad: 2})
        with pytest.raises(ClassNameError) as error:
            index_folder(root)
        message = str(error.value)
        assert str(root) in message and why in message and "no control characters" in message
        assert "\n" not in message


def test_case_and_unicode_twins_are_refused(tmp_path):
    """Two folders that are one folder on macOS/Windows (case, NFC vs NFD) would merge there."""
    make_class_folder(tmp_path / "case", {"Cat": 2, "cat": 2})
    with pytest.raises(ClassNameError, match="'Cat' and 'cat'"):
        index_folder(tmp_path / "case")
    make_class_folder(tmp_path / "nfc", {"caf\u00e9": 2, "cafe\u0301": 2})
    with pytest.raises(ClassNameError, match="ignoring case or Unicode form"):
        index_folder(tmp_path / "nfc")


def test_underscore_folders_are_classes(tmp_path):
    """Defect: `_background` was dropped without a word, giving a 2-class model from 3 folders."""
    make_class_folder(tmp_path, {"_background": 2, "cat": 2, "dog": 2})
    assert index_folder(tmp_path).classes == ["_background", "cat", "dog"]


def test_hostile_names_are_accepted_and_kept_exactly(tmp_path):
    make_class_folder(tmp_path, dict.fromkeys(ACCEPTED, 2))
    assert index_folder(tmp_path).classes == sorted(ACCEPTED)


def _swift_literal_value(literal: str) -> str:
    """Parse a Swift string literal back (the escapes swift_string writes)."""
    assert literal[0] == literal[-1] == '"'
    out, body, i = [], literal[1:-1], 0
    while i < len(body):
        if body[i] == "\\":
            nxt = body[i + 1]
            if nxt == "u":
                end = body.index("}", i)
                out.append(chr(int(body[i + 3 : end], 16)))
                i = end + 1
                continue
            out.append({"n": "\n", "r": "\r", "t": "\t", "0": "\0"}.get(nxt, nxt))
            i += 2
            continue
        assert body[i] != '"', f"unescaped quote in {literal}"
        out.append(body[i])
        i += 1
    return "".join(out)


@pytest.mark.parametrize("name", [*ACCEPTED, "new\nline", "a\u2028b"])
def test_swift_and_kotlin_literals_parse_back(name):
    assert _swift_literal_value(swift_string(name)) == name
    kotlin = kotlin_string(name)
    assert "\n" not in kotlin and "${" not in kotlin.replace("\\$", "")
    decoded = kotlin[1:-1].replace("\\$", "$").encode("latin-1", "backslashreplace").decode("unicode_escape")
    assert decoded.encode("utf-16", "surrogatepass").decode("utf-16") == name


def test_updatable_swift_usage_comment_cannot_become_code():
    """Defect: a newline in the first or last class name broke out of the `//` comment into Swift code."""
    source = swift_updatable("knn", 64, ("a\nlet pwned = 1", 'b" + evil'))
    assert "\nlet pwned" not in source
    usage = next(line for line in source.splitlines() if "classifier.update" in line)
    assert usage.startswith("//") and '"a\\nlet pwned = 1"' in usage and '"b\\" + evil"' in usage


def test_markdown_text_shows_markup_as_text():
    assert markdown_text("<script>alert(1)</script>") == "&lt;script&gt;alert\\(1\\)&lt;/script&gt;"
    assert markdown_text("# heading\n- item") == "\\# heading \\- item"
    assert markdown_text("plain name") == "plain name"


_SWIFT_LITERAL = re.compile(r'"(?:[^"\\\n]|\\.)*"')


def _swift_literals(source: str) -> tuple[str, list[str]]:
    """The source with every string literal replaced by "S" (its token stream), and the literals' values."""
    values = [_swift_literal_value(m.group()) for m in _SWIFT_LITERAL.finditer(source)]
    return _SWIFT_LITERAL.sub('"S"', source), values


def _coreml_labels(package) -> list[str]:
    """The class labels an ML Program's classify op holds (a const op's string tensor)."""
    import coremltools as ct

    main = ct.utils.load_spec(str(package)).mlProgram.functions["main"]
    ops = main.block_specializations[main.opset].operations
    classify = next(op for op in ops if op.type == "classify")
    labels = classify.inputs["classes"].arguments[0].value.immediateValue.list.values
    return [text for item in labels for text in item.immediateValue.tensor.strings.values]


@pytest.mark.slow
def test_hostile_names_round_trip_through_every_artifact(tmp_path):
    """Train the accepted hostile names tiny and export every format available here: labels.txt has one line
    per class, each name comes back exactly from every runtime's metadata and the generated code, and the
    generated Swift means the same as it does for plain names."""
    from trainer.cli import compose_config
    from trainer.export.formats import FORMATS
    from trainer.training.run import train

    root = tmp_path / "photos"
    make_class_folder(root / "train", dict.fromkeys(ACCEPTED, 3))
    make_class_folder(root / "val", dict.fromkeys(ACCEPTED, 1))
    formats = [name for name, row in FORMATS.items() if not row.missing()]
    overrides = [
        "model=demo",
        "model.alpha=0.25",
        "dataset.image_size=32",
        "dataset.batch_size=8",
        "trainer.max_epochs=1",
        "dataset=folder",
        f"dataset.root={root}",
        f"export.formats=[{','.join(formats)}]",
        "export.coreml.quantize=[fp16]",
        "export.onnx.int8=false",
        "export.litert.fp16=false",
        "export.litert.int8=false",
        "export.executorch.int8=false",
        "export.updatable=knn",
        "export.on_device.samples_per_class=2",
        "export.latency.runs=1",
        "export.latency.warmup=0",
    ]
    metrics = train(compose_config(overrides, output_dir=str(tmp_path / "run")))
    assert metrics["classes"] == sorted(ACCEPTED)
    check_names_round_trip(tmp_path / "run" / "export", sorted(ACCEPTED), formats)


def check_names_round_trip(out: Path, names: list[str], formats: list[str]) -> None:
    """Each of `names` comes back exactly from labels.txt, the manifest, every artifact's metadata, the model
    card and UpdatableClassifier.swift (as string literals, the code around them unchanged)."""
    import onnx

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == names and manifest["errors"] == []
    assert (out / "labels.txt").read_text(encoding="utf-8").split("\n") == [*names, ""]
    model = onnx.load(out / "model.onnx")
    assert json.loads({p.key: p.value for p in model.metadata_props}["labels"]) == names
    coreml = next(a for a in manifest["artifacts"] if a["format"] == "coreml" and a["kind"] == "classifier")
    assert _coreml_labels(out / coreml["path"]) == names
    if "litert" in formats:
        from trainer.export.converters.litert.flatbuffer import read_metadata

        assert read_metadata(out / "model.tflite")["classes"] == names
        assert not any(name in (out / "Classifier.kt").read_text() for name in names if len(name) > 3)
    card = (out / "README.md").read_text()
    assert all(f". {markdown_text(name)}\n" in card for name in names) and "<i>" not in card
    tokens, literals = _swift_literals((out / "UpdatableClassifier.swift").read_text())
    assert tokens == _swift_literals(swift_updatable("knn", 32, ("a", "b")))[0], "the code means the same"
    assert names[0] in literals


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("kotlinc") is None, reason="kotlinc is not installed")
def test_kotlin_literals_compile_back_to_the_names(tmp_path):
    """kotlinc reads every kotlin_string literal back as the exact name (no `$` template, no broken quote)."""
    names = [*ACCEPTED, "new\nline", "tab\there"]
    script = tmp_path / "names.kts"
    script.write_text(
        f"val names = listOf({', '.join(map(kotlin_string, names))})\n"
        'for (n in names) println(n.toByteArray().joinToString(","))\n',
        encoding="utf-8",
    )
    done = subprocess.run(["kotlinc", "-script", str(script)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    decoded = [bytes(int(b) & 0xFF for b in line.split(",")).decode() for line in done.stdout.splitlines()]
    assert decoded == names
