"""Port transformers' or timm's ViT weights into a ViTYoga checkpoint (e.g. to start from ImageNet).

    python convert_vit_checkpoint.py --source google/vit-base-patch16-224 --output_dir runs/vit-b16-in21k
    python convert_vit_checkpoint.py --source timm:vit_tiny_patch16_224.augreg_in21k --output_dir runs/ti16-in21k
    python convert_vit_checkpoint.py --source path/to/timm_checkpoint.safetensors --output_dir runs/from-file

The source is a transformers ``ViTModel`` / ``ViTForImageClassification`` (a local folder or Hub id), a timm model
name behind ``timm:``, or a timm checkpoint file (``.safetensors``, or ``.pth``/``.bin`` read with
``weights_only=True``). The converted model is checked against the source on a random batch before anything is
written, and the output folder appears only once complete (a rerun with --overwrite_output_dir swaps it in one
step; a crash leaves the previous one).

A checkpoint without a classification head (e.g. an ImageNet-21k backbone) converts to ``ViTYogaModel``; load it for
fine-tuning as transformers' ViT is: ``AutoModelForImageClassification.from_pretrained(folder,
trust_remote_code=True, num_labels=K)`` gives the converted backbone with a new head of K classes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vit_yoga.convert import load_source, max_abs_difference, save_atomically
from yoga_common.errors import UsageError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="transformers ViT folder or Hub id, timm:<name>, or a file")
    parser.add_argument("--output_dir", required=True, type=Path, help="where the ViTYoga checkpoint is written")
    parser.add_argument("--num_attention_heads", type=int, default=None,
                        help="heads of a timm checkpoint file (shapes do not tell); default hidden_size / 64")
    parser.add_argument("--overwrite_output_dir", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest output difference accepted (fp32)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The command line: a mistake a user can fix is one ``error:`` line and exit status 2, here and only here."""
    args = parse_args(argv)
    try:
        return convert(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def convert(args: argparse.Namespace) -> int:
    output_dir: Path = args.output_dir
    if output_dir.exists() and any(output_dir.iterdir()) and not args.overwrite_output_dir:
        raise UsageError(f"{output_dir} exists and is not empty; pass --overwrite_output_dir or pick another folder.")
    try:
        reference, converted, (mean, std) = load_source(args.source, args.num_attention_heads)
    except (ValueError, OSError) as error:  # UsageError included: the source named is the problem
        raise UsageError(f"cannot convert {args.source}: {error}") from error
    if reference is not None:
        difference = max_abs_difference(reference, converted)
        print(f"max |ViTYoga - source| on a random batch: {difference:.3g}")
        if difference > args.tolerance:
            print(f"error: outputs differ by {difference:.3g} > {args.tolerance}; nothing was written.",
                  file=sys.stderr)
            return 1
    save_atomically(converted, mean, std, output_dir, overwrite=args.overwrite_output_dir)
    count = sum(p.numel() for p in converted.parameters())
    print(f"wrote {type(converted).__name__} ({count:,} parameters) to {output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
