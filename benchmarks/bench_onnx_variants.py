"""Why ONNX Runtime is not faster: ViT-Ti/16 graphs ONNX Runtime could run faster, timed against PyTorch eager.

For transformers' ViT-Ti/16 (the peer) and ours (sdpa), exported as ``python -m vit_yoga.export`` exports:
the plain graph (``fp32``), ONNX Runtime's transformer optimiser (``fused``: ``model_type="vit"``, which fuses
SkipLayerNormalization and BiasGelu and would fuse attention where it finds its pattern), dynamic int8 of each
(``int8``, ``fused-int8``) and weight-only 8-bit blocks with int8 compute (``nbits8``: ``MatMulNBits``,
accuracy level 4). Every timing runs in a fresh process with that backend alone (``bench_inference``'s worker),
rounds interleaved; the ratio is the median per-round speed-up over PyTorch eager.

    python benchmarks/bench_onnx_variants.py [--rounds 3] [--batch_sizes 1 32] [--threads 2] [--graphs ...] [--json P]

``--models vit-pico`` (64 px, conv stem) is a quick run of the same code; ``--json`` also writes one row per model,
batch and graph (images/s, speed-up over eager) and what the optimiser fused.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_inference as bench  # noqa: E402
from common import finish  # noqa: E402

GRAPHS = ("fp32", "fused", "int8", "fused-int8", "nbits8")


def variants(name: str, folder: Path, fusions: dict[str, dict[str, int]] | None = None) -> dict[str, Path]:
    """Every graph of model ``name``, written under ``folder``; what the optimiser fused into ``fusions[name]``."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer
    from onnxruntime.transformers.optimizer import optimize_model

    files = {kind: folder / f"{name}-{kind}.onnx" for kind in GRAPHS}
    wrapper = bench.build(name)
    config = wrapper.model.config
    size = bench.image_size_of(name)
    bench.export_graph(wrapper, files["fp32"], torch.randn(2, 3, size, size), 17, "torchscript")
    optimised = optimize_model(str(files["fp32"]), model_type="vit", num_heads=config.num_attention_heads,
                               hidden_size=config.hidden_size, opt_level=1)
    fused = collections.Counter(n.op_type for n in optimised.model.graph.node if n.domain == "com.microsoft")
    print(f"{name}: the optimiser fused {dict(fused)}", flush=True)
    if fusions is not None:
        fusions[name] = dict(fused)
    optimised.save_model_to_file(str(files["fused"]))
    for source, target in (("fp32", "int8"), ("fused", "fused-int8")):
        quantize_dynamic(str(files[source]), str(files[target]), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm"],
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=4, bits=8)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(files["fp32"])), bits=8, block_size=32, is_symmetric=True,
                                     accuracy_level=4, algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(files["nbits8"]), False)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["hf-vit-ti16", "vit-ti16-sdpa"],
                        choices=["hf-vit-ti16", "vit-ti16-sdpa", "vit-ti16-eager", "vit-pico"])
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min_seconds", type=float, default=1.0)
    parser.add_argument("--graphs", nargs="+", default=list(GRAPHS), choices=list(GRAPHS),
                        help="which graphs to time against eager (default: all of them)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    fusions: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_onnx_variants_") as workdir:
        for name in args.models:
            files = variants(name, Path(workdir), fusions)
            for batch in args.batch_sizes:
                def measure(kind: str, batch: int = batch, name: str = name, files: dict = files) -> float:
                    return bench.time_in_own_process({
                        "model": name, "backend": "eager" if kind == "eager" else "ort-" + kind, "batch": batch,
                        "threads": args.threads, "min_seconds": args.min_seconds,
                        "path": str(files.get(kind, "")), "names": ["logits"]})

                times = bench.interleaved(["eager", *(kind for kind in files if kind in args.graphs)], args.rounds,
                                          measure)
                found = [{"model": name, "batch": batch, "kind": kind,
                          "images_per_second": batch / statistics.median(seconds),
                          "speedup_vs_eager": statistics.median(
                              e / s for e, s in zip(times["eager"], seconds, strict=True))}
                         for kind, seconds in times.items()]
                rows += found
                print(f"{name} batch {batch}: " + ", ".join(
                    f"{r['kind']} {r['images_per_second']:.1f} img/s ({r['speedup_vs_eager']:.2f}x)" for r in found),
                      flush=True)
    return finish({"threads": args.threads, "rounds": args.rounds, "fused": fusions, "rows": rows}, args.json)


if __name__ == "__main__":
    sys.exit(main())
