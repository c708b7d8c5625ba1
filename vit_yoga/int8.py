"""Dynamic int8 of an exported graph, with the layers whose int8 changes the answers most kept in fp32.

ONNX Runtime's quantiser quantises what it is told to; choosing what it is told is the part done here:

- ``weight_nodes``: the network's MatMul/Gemm nodes with a constant weight (what dynamic quantisation turns into
  int8), without ``decoding_nodes`` (the tree decoding's 0/1 child -> parent products, which stay exact).
- ``quantize_dynamic_int8``: ONNX Runtime's dynamic quantisation of the nodes chosen.
- ``quantize_with_sensitivity``: every weight layer in int8, then, while the int8 top-1 agrees with fp32 on too few
  calibration images, the most damaging layers back in fp32 one at a time (mixed precision).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .onnx_graph import OutputSpec
from .onnx_runtime import INPUT_NAME, ort_session

logger = logging.getLogger(__name__)

RANKING_IMAGES = 128  # calibration images the per-layer damage ranking uses (the first ones)


def decoding_nodes(graph: Any) -> list[str]:
    """The MatMul/Gemm nodes of ``tree_probabilities``: products with a 0/1 child -> parent matrix, which sum
    children's probabilities into their parents'. Exact in fp32, they are bookkeeping, not learned weights, and
    never get quantised."""
    from onnx import numpy_helper

    constants = {tensor.name: tensor for tensor in graph.initializer}
    constants |= {node.output[0]: attribute.t for node in graph.node if node.op_type == "Constant"
                  for attribute in node.attribute if attribute.name == "value"}

    def is_parent_matrix(name: str) -> bool:
        return name in constants and bool(np.isin(numpy_helper.to_array(constants[name]), (0, 1)).all())

    return [node.name for node in graph.node
            if node.op_type in ("MatMul", "Gemm") and any(map(is_parent_matrix, node.input))]


def weight_nodes(graph: Any) -> list[str]:
    """The network's MatMul/Gemm nodes with a constant weight (what dynamic quantisation turns into int8), in
    graph order, without the tree decoding's products."""
    constants = {tensor.name for tensor in graph.initializer}
    constants |= {node.output[0] for node in graph.node if node.op_type == "Constant"}
    decoding = set(decoding_nodes(graph))
    return [node.name for node in graph.node if node.op_type in ("MatMul", "Gemm")
            and node.name not in decoding and any(name in constants for name in node.input)]


def quantize_dynamic_int8(source: Path, target: Path, nodes: Sequence[str] | None = None) -> None:
    """ONNX Runtime's dynamic quantisation of ``nodes`` (default: every weight MatMul/Gemm, nearly all of a ViT's
    FLOPs): int8 weights, activations quantised per batch at run time. Convolutions stay fp32 (ConvInteger has no
    fast CPU kernel and the patch embedding is a small share of the time), and so do the tree decoding's products
    (``decoding_nodes``)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if nodes is None:
        nodes = weight_nodes(onnx.load(str(source)).graph)
    root = logging.getLogger()
    level = root.level
    # The quantiser warns on the root logger, at every call, that the model could be pre-processed (shape
    # inference; it changes nothing for a graph whose MatMul shapes torch's exporter already wrote).
    root.setLevel(logging.ERROR)
    try:
        # The quantiser turns a Gemm into a MatMul named ``<name>_MatMul`` (and an Add) before it quantises.
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm"],
                         nodes_to_quantize=[*nodes, *(f"{name}_MatMul" for name in nodes)])
    finally:
        root.setLevel(level)


def logits_outputs(session: Any, spec: OutputSpec, pixel_values: np.ndarray, batch_size: int = 32) -> list[np.ndarray]:
    """Every ``logits`` output of ``session`` on ``pixel_values``, in ``spec``'s order."""
    names = [name for name, kind in zip(spec.names, spec.kinds, strict=True) if kind == "logits"]
    parts = [session.run(names, {INPUT_NAME: pixel_values[start:start + batch_size]})
             for start in range(0, len(pixel_values), batch_size)]
    return [np.concatenate(column) for column in zip(*parts, strict=True)]


def top1_agreement(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> float:
    """The smallest share, over the logits outputs, of images whose top-1 the candidate keeps."""
    return min(float((ref.argmax(-1) == got.argmax(-1)).mean()) for ref, got in zip(reference, candidate, strict=True))


def quantize_with_sensitivity(
    source: Path, target: Path, spec: OutputSpec, pixel_values: np.ndarray, min_agreement: float,
    max_fp32_share: float = 0.5,
) -> dict[str, Any]:
    """Dynamic int8 with the layers whose quantisation changes the answers most left in fp32 (mixed precision).

    The agreement aimed at is halfway between ``min_agreement`` and 100 % (99.5 % for 99 %): the checks run on other
    images, whose share varies by about that much. On the calibration images (``pixel_values``, never the images the
    checks then run on): quantise every weight layer; if the int8 top-1 agrees with fp32 on less than the aim, rank
    the layers by the mean squared change of the logits when each alone is quantised, and keep the worst in fp32 one
    at a time until the aim is reached or ``max_fp32_share`` of the layers are fp32. Returns what was chosen and
    measured.

    Why (docs/deployment.md): on the 30-epoch out-of-the-box vit-pico, 8-bit weights alone (no activation quantisation)
    move the logits by 0.01-0.05 while 3 % of real photos have their two best classes closer than 0.05, so every
    all-int8 scheme tried (dynamic, static QDQ with MinMax/percentile/entropy calibration, per-channel, weight-only
    8-bit blocks) flipped 1-3 % of the top-1s; the first block is the most sensitive.
    """
    import onnx
    from tqdm.auto import tqdm

    nodes = weight_nodes(onnx.load(str(source)).graph)
    reference = logits_outputs(ort_session(source), spec, pixel_values)

    def agreement(path: Path) -> float:
        return top1_agreement(reference, logits_outputs(ort_session(path), spec, pixel_values))

    quantize_dynamic_int8(source, target, nodes)
    first = agreement(target)
    aim = 1 - (1 - min_agreement) / 2
    result: dict[str, Any] = {"calibration_images": len(pixel_values), "layers": len(nodes), "fp32_layers": [],
                              "calibration_aim": aim, "calibration_agreement_all_int8": first,
                              "calibration_agreement": first}
    if first >= aim:
        return result
    damage = {}
    sample = pixel_values[:RANKING_IMAGES]  # a squared error is steady on fewer images than a share of flips
    sample_reference = [logits[:RANKING_IMAGES] for logits in reference]
    for node in tqdm(nodes, desc="Ranking layers by int8 damage", unit="layer", leave=False):
        quantize_dynamic_int8(source, target, [node])
        got = logits_outputs(ort_session(target), spec, sample)
        damage[node] = float(np.mean([((g - r) ** 2).mean() for g, r in zip(got, sample_reference, strict=True)]))
    ranked = sorted(nodes, key=lambda node: -damage[node])
    for count in range(1, int(max_fp32_share * len(nodes)) + 1):
        kept = ranked[:count]
        quantize_dynamic_int8(source, target, [node for node in nodes if node not in kept])
        share = agreement(target)
        result.update(fp32_layers=kept, calibration_agreement=share)
        logger.info("int8 with %d layer(s) in fp32: %.2f%% top-1 agreement on the calibration images", count,
                    100 * share)
        if share >= aim:
            break
    return result


__all__ = ["decoding_nodes", "logits_outputs", "quantize_dynamic_int8", "quantize_with_sensitivity", "top1_agreement",
           "weight_nodes"]
