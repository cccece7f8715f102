"""``lungs train`` and ``lungs segment``: the lung segmentation model and the lungs it finds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.io import decode_image
from ..errors import ImageDecodeError
from ..lungs import ENCODERS
from ..lungs.segment import get_segmenter


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_lungs_train(args) -> int:
    from ..lungs.train import LungTrainConfig, train_lungs  # lazy: SciPy (its augmentation)

    weights = None if args.weights == "none" else args.weights
    config = LungTrainConfig(
        data=tuple(args.data),
        out=args.out,
        size=args.size,
        encoder=args.encoder,
        weights=weights if args.encoder != "unet" else None,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        limit=args.limit,
        exclude=tuple(args.exclude or ()),
        weights_licence=args.weights_licence or "",
    )
    out = train_lungs(config, progress=_say)
    record = json.loads((out / "lungs.json").read_text(encoding="utf-8"))
    held = record["held_out"]
    _say(
        f"held-out ({held['images']} images): Dice {held['dice']:.4f}, IoU {held['iou']:.4f}, "
        f"two lungs found in {held['two_lungs']:.0%}"
    )
    print(out)
    return 0


def _unique_png(out: Path, stem: str, written: set[str]) -> Path:
    name, n = f"{stem}_lungs.png", 1
    while name in written:
        n += 1
        name = f"{stem}_{n}_lungs.png"
    written.add(name)
    return out / name


def cmd_lungs_segment(args) -> int:
    segmenter = get_segmenter(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed, written = 0, set()
    for image in args.images:
        try:
            lungs = segmenter.lungs(decode_image(image))
        except ImageDecodeError as exc:
            failed += 1
            print(json.dumps({"path": image, "error": str(exc)}))
            _say(f"error: {exc}")
            continue
        mask_path = _unique_png(out, Path(image).stem, written)
        Image.fromarray((lungs.labels > 0).astype(np.uint8) * 255).save(mask_path)
        print(json.dumps({"path": image, **lungs.record(), "mask": str(mask_path)}))
        _say(f"{image}: {lungs.status}, lung fraction {lungs.fraction:.2f}")
    return 2 if failed else 0


def add_lungs_parser(sub) -> None:
    lungs = sub.add_parser("lungs", help="lung fields: train the lung model, segment images")
    actions = lungs.add_subparsers(dest="lungs_command", required=True)
    p = actions.add_parser(
        "train",
        help="train a lung segmentation model on mask sets (images/, masks/, manifest.csv); prints its folder last",
    )
    p.add_argument("--data", nargs="+", required=True, metavar="MASKS_DIR", help="one or more mask set folders")
    p.add_argument("--out", required=True, help="folder for lungs.keras and lungs.json (never overwritten)")
    p.add_argument("--encoder", choices=list(ENCODERS), default="mobilenetv2_0.35")
    p.add_argument(
        "--weights",
        default="imagenet",
        help="the MobileNetV2 encoder's start: imagenet (Keras's download path), a weights file, or none",
    )
    p.add_argument("--size", type=int, default=128, help="the model's square input size (default 128)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0, help="the split and the augmentation")
    p.add_argument("--limit", type=int, help="use at most this many pairs per set (a quick run)")
    p.add_argument(
        "--exclude",
        action="append",
        metavar="COLUMN=VALUE",
        help="leave out manifest rows with this value (repeatable), e.g. source=Shenzhen for masks whose licence "
        "does not allow what you will do with the weights",
    )
    p.add_argument(
        "--weights-licence",
        metavar="TEXT",
        help="the terms the trained weights are shipped under, kept in the record beside each data set's licence",
    )
    p.set_defaults(func=cmd_lungs_train)
    p = actions.add_parser(
        "segment",
        help="find the lungs: a mask PNG per image (its own size) and one JSON line each "
        "(lung_fraction, lung_boxes image_left/image_right as [x0, y0, x1, y1])",
    )
    p.add_argument("images", nargs="+", help="PNG, JPEG or DICOM files")
    p.add_argument("--out", default="lungs", help="folder for the mask PNGs (default: ./lungs)")
    p.add_argument("--model", help="a lungs.keras file (default: the model shipped with cxrcore)")
    p.set_defaults(func=cmd_lungs_segment)
