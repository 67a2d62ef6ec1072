"""report.html and try.html in a real headless Chromium (Debian's `chromium`, driven by Playwright's client):
a real tiny run and ONNX export served on 127.0.0.1; the try page must give ONNX Runtime's answers on two
val photos, and neither page may log a console error. Screenshots are kept in the test's tmp folder."""

from __future__ import annotations

import functools
import json
import shutil
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import class_image, make_class_folder
from PIL import Image

from trainer.cli import compose_config
from trainer.data.data_config import DataConfig
from trainer.export.handoff.try_page.runtime import FETCH_COMMAND, missing_reason
from trainer.export.verify import load_inputs
from trainer.training.run import train

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync"]  # fmt: skip
CLASSES = {"red <b>x": 12, "green & co": 12, "blue": 12}  # class names a page must escape
PROBABILITY_TOLERANCE = 1e-3
# Logits, as a share of each photo's logit range: meaningful whatever the temperature flattened.
LOGIT_TOLERANCE = 1e-3
DRAFT_TOLERANCE = 3e-2  # a large JPEG: trainer decodes it with DCT scaling, the page averages blocks

playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="no chromium: apt-get install chromium")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run with an ONNX export (fp32 and int8), its report and try page."""
    root = tmp_path_factory.mktemp("pages")
    photos = root / "photos"
    make_class_folder(photos / "train", CLASSES)
    make_class_folder(photos / "val", {name: 4 for name in CLASSES})
    overrides = ["dataset=folder", f"dataset.root={photos}", "model=demo", "model.alpha=0.25",
                 "dataset.image_size=32", "dataset.batch_size=8", "trainer.max_epochs=3", "optim.lr=0.01",
                 "export.formats=[onnx]", "export.latency.runs=1", "export.latency.warmup=0"]  # fmt: skip
    train(compose_config(overrides, output_dir=str(root / "run")))
    return root / "run"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # one line per request would drown the output
        pass


@pytest.fixture(scope="module")
def server(run_dir: Path) -> Iterator[str]:
    """The run folder over HTTP on 127.0.0.1 (browsers refuse fetch() from file:// pages)."""
    handler = functools.partial(_QuietHandler, directory=str(run_dir))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture
def page(tmp_path: Path) -> Iterator:
    """A Chromium page that records console errors and uncaught exceptions in `page.errors`."""
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        tab = browser.new_page()
        tab.errors = []
        tab.on("console", lambda m: m.type == "error" and tab.errors.append(m.text))
        tab.on("pageerror", lambda e: tab.errors.append(str(e)))
        yield tab
        browser.close()


def _phone_photos(folder: Path) -> list[Path]:
    """A small JPEG stored sideways with EXIF orientation 6 (shown upright), and one large enough that
    trainer decodes it at half size."""
    folder.mkdir(parents=True, exist_ok=True)
    sideways, large = folder / "sideways.jpg", folder / "large.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    class_image(0, size=48).resize((64, 40)).save(sideways, quality=90, exif=exif)
    class_image(1, size=48).resize((400, 300), Image.BICUBIC).save(large, quality=90)
    return [sideways, large]


def _screenshot(page, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


def test_report_page_opens_offline_and_escapes_class_names(run_dir: Path, server: str, page, tmp_path):
    report = run_dir / "report.html"
    assert report.stat().st_size < 3_000_000
    page.goto(f"{server}/report.html")
    text = page.inner_text("body")
    assert "red <b>x" in text and "green & co" in text  # shown as text, not parsed as markup
    assert page.locator('b:text-is("x")').count() == 0
    for heading in ("Confidence", "Per class", "Confusion matrix", "Training curves", "Artifacts"):
        assert page.get_by_role("heading", name=heading).count() == 1
    assert "http" not in report.read_text().replace("http://www.w3.org/2000/svg", "")  # nothing fetched
    _screenshot(page, tmp_path / "report.png")
    assert page.errors == []


def test_temperature_is_in_the_export_and_keeps_its_answers(run_dir: Path):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    manifest = json.loads((run_dir / "export" / "manifest.json").read_text())
    assert manifest["metadata"]["temperature"] == metrics["temperature"] > 0
    assert metrics["temperature_in_model"] is True
    fp32 = next(a for a in manifest["artifacts"] if a["name"].endswith("model.onnx"))
    assert fp32["val_top1"] == pytest.approx(metrics["val_top1"])  # folded T: same winners as the run
    int8 = next(a for a in manifest["artifacts"] if a["name"].endswith("model_int8.onnx"))
    assert len(int8["answers_changed_vs_fp32"]) == round((1 - int8["top1_agreement_vs_fp32"]) * 12)
    card = (run_dir / "export" / "README.md").read_text()
    assert "fitted on the val split" in card and 'else "not sure"' in card and ': "not sure"' in card


def test_try_page_gives_onnxruntime_answers(run_dir: Path, server: str, page, tmp_path):
    reason = missing_reason()
    if reason:
        pytest.skip(f"{reason} (`{FETCH_COMMAND}`)")
    export = run_dir / "export"
    manifest = json.loads((export / "manifest.json").read_text())
    val = sorted((run_dir.parent / "photos" / "val").rglob("*.*"))[::6][:2]
    photos = val + _phone_photos(tmp_path / "phone")
    tolerances = [LOGIT_TOLERANCE] * 3 + [DRAFT_TOLERANCE]
    page.goto(f"{server}/export/try.html")
    page.evaluate("window.trainerReady")
    options = page.locator("#model option").all_inner_texts()
    assert any("int8" in o for o in options) and any("fp32" in o for o in options)
    page.set_input_files("#files", [str(p) for p in photos])
    page.wait_for_function(f"window.trainerResults.length === {len(photos)}", timeout=30_000)
    results = page.evaluate("window.trainerResults")

    inputs, kept, _ = load_inputs([str(p) for p in photos], DataConfig.from_dict(manifest["preprocess"]))
    session = ort.InferenceSession(str(export / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: inputs})[0]
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    assert kept == [0, 1, 2, 3] and [r["file"] for r in results] == [p.name for p in photos]
    for result, want, logit, tolerance in zip(results, expected, logits, tolerances, strict=True):
        np.testing.assert_allclose(result["probs"], want, atol=PROBABILITY_TOLERANCE)
        np.testing.assert_allclose(result["logits"], logit, rtol=0, atol=tolerance * np.ptp(logit))
    assert [r["top"] for r in results[:3]] == list(expected[:3].argmax(1))
    _screenshot(page, tmp_path / "try.png")
    assert page.errors == []
