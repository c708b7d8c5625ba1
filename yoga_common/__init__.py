"""The bottom layer of vit-yoga: what both the data set package (``yoga82``) and the training library (``vit_yoga``)
use, so that neither imports the other's upper layer.

- ``errors``: ``UsageError``, the error a user can cause and fix (a bad flag, file or folder).
- ``files``: files and folders that are complete or absent, scratch space beside a path, crash-proof locks.
- ``hub``: pushing a finished folder (a model or a data set) to the Hugging Face Hub in one commit.

Standard library only, except ``hub``, which imports ``huggingface_hub`` when it pushes.
"""
