"""How far each int8 scheme of ONNX Runtime's quantiser moves a trained checkpoint's top-1 (docs/deployment.md).

On the images ``python -m vit_yoga.export`` checks (the synthetic poses' test split, and ``--photos`` folders), the
top-1 agreement with the fp32 graph of: dynamic int8 of every weight layer at batch 1 and 32; static QDQ int8
calibrated on the synthetic validation split with MinMax, percentile and entropy, per-tensor and per-channel
weights; weight-only 8-bit blocks (``MatMulNBits``, fp32 and int8 compute); and the export's mixed precision
(``quantize_with_sensitivity``). Also the share of images whose two best logits are closer than 0.05.

    python benchmarks/bench_int8_schemes.py --model runs/level3 --photos ../shared/real-photos/images

``--json PATH`` also writes the numbers: per image set its count and near-tie share, and one row per scheme with its
top-1 agreement on each set.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import finish  # noqa: E402

from vit_yoga import export, int8, onnx_graph, onnx_runtime  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--photos", nargs="*", default=[])
    parser.add_argument("--calibration_limit", type=int, default=512)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    import logging

    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    logging.getLogger("onnxruntime").setLevel(logging.WARNING)  # the weight-only quantiser logs every node
    model, processor = onnx_graph.load_checkpoint(args.model)
    wrapper = onnx_graph.ExportableClassifier(model).eval()
    images = {"synthetic test": export.synthetic_test_images()}
    images |= {folder: export.load_photos(Path(folder)) for folder in args.photos}
    pixels = {name: export.preprocess(processor, photos).numpy() for name, photos in images.items()}
    calibration = export.preprocess(processor, export.synthetic_calibration_images(args.calibration_limit)).numpy()

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"pixel_values": calibration[i:i + 32]} for i in range(0, len(calibration), 32)])

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(prefix="bench_int8_") as workdir:
        folder = Path(workdir)
        fp32 = folder / "fp32.onnx"
        onnx_graph.export_graph(wrapper, fp32, torch.from_numpy(next(iter(pixels.values()))[:2]), 17, "torchscript")
        reference = {name: int8.logits_outputs(onnx_runtime.ort_session(fp32), wrapper.spec, x, 64)
                     for name, x in pixels.items()}
        image_sets = {}
        for name, ref in reference.items():
            top = np.sort(ref[0], -1)  # the finest level's logits
            image_sets[name] = {"images": len(ref[0]), "near_ties": float(np.mean(top[:, -1] - top[:, -2] < 0.05))}
            print(f"{name}: {len(ref[0])} images, {image_sets[name]['near_ties']:.1%} with the two best logits "
                  "within 0.05")
        rows: list[dict[str, Any]] = []

        def report(label: str, path: Path, batch: int = 32) -> None:
            agreement = {}
            for name, x in pixels.items():
                got = int8.logits_outputs(onnx_runtime.ort_session(path), wrapper.spec, x, batch)
                agreement[name] = int8.top1_agreement(reference[name], got)
            rows.append({"scheme": label, "batch": batch, "agreement": agreement})
            print(f"{label}: " + ", ".join(f"{name} {value:.1%}" for name, value in agreement.items()), flush=True)

        schemes: list[tuple[str, Callable[[Path], None]]] = [
            ("dynamic, every weight layer", lambda out: int8.quantize_dynamic_int8(fp32, out))]
        for method in (CalibrationMethod.MinMax, CalibrationMethod.Percentile, CalibrationMethod.Entropy):
            for per_channel in (False, True):
                schemes.append((f"static QDQ {method.name}, per-channel {per_channel}",
                                lambda out, m=method, pc=per_channel: quantize_static(
                                    str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=pc,
                                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                    calibrate_method=m, op_types_to_quantize=["MatMul", "Gemm"])))
        for level in (0, 4):
            def nbits(out: Path, level: int = level) -> None:
                config = DefaultWeightOnlyQuantConfig(block_size=128, is_symmetric=True, accuracy_level=level, bits=8)
                quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32)), bits=8, block_size=128, is_symmetric=True,
                                                 accuracy_level=level, algo_config=config)
                quantizer.process()
                quantizer.model.save_model_to_file(str(out), False)
            schemes.append((f"MatMulNBits 8-bit, accuracy level {level}", nbits))
        for index, (label, quantize) in enumerate(schemes):
            out = folder / f"scheme{index}.onnx"
            quantize(out)
            report(label, out)
            if index == 0:
                report(label + " (batch 1)", out, batch=1)
        mixed = int8.quantize_with_sensitivity(fp32, folder / "mixed.onnx", wrapper.spec, calibration, 0.99)
        report(f"mixed precision ({len(mixed['fp32_layers'])} of {mixed['layers']} layers fp32)", folder / "mixed.onnx")
    return finish({"model": args.model, "image_sets": image_sets, "rows": rows}, args.json)


if __name__ == "__main__":
    sys.exit(main())
