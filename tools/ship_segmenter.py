"""Ship a trained lung segmenter (``covidxray segment train --out RUN``) in the package and write its section
of MODEL_CARD.md from its measured results.

    .venv/bin/python tools/ship_segmenter.py runs/segmenter

Copies ``model.safetensors``, ``config.json`` and ``model.onnx`` into ``src/covidxray/default_segmenter/`` and
replaces the "## Lung segmenter" section of MODEL_CARD.md (appending it when absent); every figure in it is read
from the segmenter's ``config.json``. ``tools/ship_default_model.py`` appends the same section.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DIR = REPO / "src" / "covidxray" / "default_segmenter"
FILES = ("model.safetensors", "config.json", "model.onnx")
HEADING = "## Lung segmenter"


def _d(m: dict[str, Any], key: str) -> str:
    v = m.get(key)
    return "n/a" if not v else f"{v['mean']:.3f} (median {v['median']:.3f}, min {v['min']:.3f})"


def segmenter_section(config: dict[str, Any], onnx_bytes: int | None = None) -> str:
    """The MODEL_CARD.md section of a segmenter config.json."""
    m = config["metrics"]
    t = config["training"]
    test, splits = m["test"], m["splits"]
    j, c = test.get("jsrt", {}), test.get("covid-chestxray-dataset", {})
    p = config["preprocessing"]
    arch = config["architecture"]
    size = f", ONNX {onnx_bytes / 1e6:.1f} MB" if onnx_bytes else ""
    lines = [
        HEADING,
        "",
        f"`{config['version']}` in `src/covidxray/default_segmenter/` (safetensors + ONNX{size}), used by "
        "`covidxray segment`, the input guard's lung-field check, `resize: lungcrop` and the in-lung Grad-CAM "
        'share. Load it with `covidxray.segmentation.load_segmenter(backend="onnx"|"torch")`.',
        "",
        f"- **Network**: MONAI `UNet` (2-D, channels {arch['channels']}, strides {arch['strides']}, "
        f"{arch['num_res_units']} residual unit(s), batch norm), trained from scratch here (nothing downloaded); "
        f"three sigmoid outputs: {', '.join(config['outputs'])}.",
        f"- **Input**: the image squashed to {p['image_size']}x{p['image_size']} px, histogram-equalised, "
        f"[0, 1] (mean {p['mean']}, std {p['std']} applied inside the network); the `preprocessing` block of "
        "its config.json and ONNX metadata is a `covidxray.preprocess.Preprocessing`. Output: the `lungs` "
        f"probability resized to the image, >= {config['threshold']}, two largest components, holes filled.",
        f"- **Convention**: {config['convention']} (like JSRT/SCR, Montgomery, Shenzhen).",
        "- **Two annotation conventions, one model**: JSRT/SCR supervises `lungs` (labels 150 + 200) and "
        "`heart` (250); the V7 masks of covid-chestxray-dataset (lungs *including* the region behind the heart) "
        "supervise `lungs_behind_heart`, and supervise `lungs` with the heart the network currently predicts "
        "removed and ignored (loss masking): outside the V7 lungs is not lung, inside and off the heart is.",
        f"- **Data**: JSRT ({splits['train']['jsrt']} train / {splits['val']['jsrt']} val / "
        f"{splits['test']['jsrt']} test images, one per patient) and the V7 masks "
        f"({splits['train']['covid-chestxray-dataset']} / {splits['val']['covid-chestxray-dataset']} / "
        f"{splits['test']['covid-chestxray-dataset']} images), split by patient (`patientid` of metadata.csv), "
        "seeded.",
        f"- **Training**: {t['epochs']} epochs, batch {t['batch_size']}, AdamW, one-cycle learning rate peaking "
        f"at {t['lr']}, weighted BCE + soft Dice, {t['threads']} thread(s), {t['seconds'] / 60:.0f} min on a "
        f"shared 2-core machine; best epoch on validation: {m['best_epoch']}. Augmentation for unseen hospitals: "
        "scale 0.75-1.3 (crops and black borders), aspect, rotation +-10 degrees, shifts, lower resolutions, "
        "blur, gamma 0.6-1.7, noise, black bands and burnt-in text, then the same equalisation as inference. "
        f"Retrain: `covidxray segment train --root ../shared/data --out runs/segmenter` (seed {t['seed']}).",
        "",
        "Held-out test Dice (masks at the image's own size, after clean-up; mean, median, min):",
        "",
        "| source | images | Dice | also |",
        "|---|---|---|---|",
        f"| JSRT (SCR lungs) | {j.get('n_images', 0)} | {_d(j, 'lungs')} | heart {_d(j, 'heart')} |",
        f"| covid-chestxray-dataset (V7 lungs, `lungs_behind_heart` output) | {c.get('n_images', 0)} | "
        f"{_d(c, 'lungs_behind_heart')} | shipped `lungs` mask vs the whole V7 mask (conventions differ: the "
        f"region behind the heart counts as missed, a lower bound): {_d(c, 'lungs_vs_v7')} |",
        "",
        "Limitations: 247 JSRT images (one Japanese population, digitised film) and 428 COVID-19 images teach it; "
        "children (Kermany), lateral views, heavy consolidation and devices are barely represented. Its masks are "
        "for measuring and cropping, not for any clinical use.",
        "",
    ]
    return "\n".join(lines)


def replace_section(card: str, section: str) -> str:
    """MODEL_CARD.md text with its lung-segmenter section replaced (or appended)."""
    if HEADING not in card:
        return card.rstrip("\n") + "\n\n" + section
    start = card.index(HEADING)
    nxt = card.find("\n## ", start + len(HEADING))
    return card[:start] + section + ("" if nxt < 0 else card[nxt + 1 :])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="output folder of 'covidxray segment train'")
    args = ap.parse_args()
    DEFAULT_DIR.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copy2(args.run / name, DEFAULT_DIR / name)
    config = json.loads((DEFAULT_DIR / "config.json").read_text())
    card = REPO / "MODEL_CARD.md"
    section = segmenter_section(config, (DEFAULT_DIR / "model.onnx").stat().st_size)
    card.write_text(replace_section(card.read_text(), section))
    size = sum((DEFAULT_DIR / n).stat().st_size for n in FILES)
    print(f"shipped {args.run} -> {DEFAULT_DIR} ({size / 1e6:.2f} MB); updated {card}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
