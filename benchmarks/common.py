"""Settings and helpers shared by the benchmark scripts."""
from __future__ import annotations

MATMUL = {"float32": ("float32", "highest"), "tf32": ("tensorfloat32", "high")}


def set_matmul_precision(name: str) -> None:
    """Give JAX and PyTorch the same float32 matmul precision.

    On recent NVIDIA GPUs JAX computes float32 products in TF32 by default and PyTorch in full
    float32; a side-by-side timing must use one of the two for both.  No effect on CPUs.
    """
    import jax

    jax_name, torch_name = MATMUL[name]
    jax.config.update("jax_default_matmul_precision", jax_name)
    try:
        import torch
    except ImportError:
        return
    torch.set_float32_matmul_precision(torch_name)


def write_results(out: str, stem: str, title: str, intro: str, table: list[str], payload: dict,
                  indent: int | None = 2) -> str:
    """``out/<stem>.md`` (the title, the intro paragraph, the table) and ``out/<stem>.json``
    (``payload``, ``indent`` as :func:`json.dump`'s: None for one line); returns the markdown."""
    import json
    import os

    text = "\n".join([f"# {title}", "", intro, ""] + table) + "\n"
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{stem}.md"), "w") as fh:
        fh.write(text)
    with open(os.path.join(out, f"{stem}.json"), "w") as fh:
        json.dump(payload, fh, indent=indent)
    return text


def parse_cached(ap, data_dir: str, results_dir: str):
    """Parse the command line of a benchmark that trains on the shared data and keeps its work in
    a cache folder: adds ``--cache``, ``--out`` (default ``results_dir``) and ``--tag``; exits with
    one sentence when ``data_dir`` is absent; creates the cache folder."""
    import os
    import sys

    ap.add_argument("--cache", help="folder keeping the pretrained members and finished rows between runs")
    ap.add_argument("--out", default=results_dir, help="folder the result files are written to")
    ap.add_argument("--tag", default="", help="suffix of the result files' names")
    args = ap.parse_args()
    if not os.path.isdir(data_dir):
        sys.exit(f"skipped: {data_dir} is absent (real data lives only on developer machines and CI)")
    if args.cache:
        os.makedirs(args.cache, exist_ok=True)
    return args
