"""The consensus methods of seed ensembles compared on the same trained members.

    python benchmarks/accuracy.py --ensemble 4 --ensemble-init member --seeds 0 4 8 12 16 --datasets bladder worm pbmc \
        --save-members DIR
    python benchmarks/consensus.py DIR

``accuracy.py --save-members`` keeps each ensemble's members (labels, soft assignments) and the
true labels of the kept cells; this script makes every consensus of
:func:`scdc_jax.cluster.ensemble.consensus_labels` from them (the same function a run calls, with
the run's seed), and the member that agrees best with the others (``best by agreement``), and
compares their ARI with the members' (each trained as the single run of its seed).  Training is not
repeated: a run with ``--consensus M`` trains the same members and returns exactly the labels of
``M`` here.  Writes ``benchmarks/results/consensus<tag>.{md,json}``.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def compare(files: list[str]) -> dict:
    """Per dataset and mode: the members' ARI, and per method the ARI of each ensemble's consensus."""
    from sklearn.metrics import adjusted_rand_score

    from scdc_jax.cluster.ensemble import CONSENSUS, best_member, consensus_labels

    out: dict = {}
    for path in sorted(files):
        d = np.load(path)
        dataset, mode, _ = os.path.basename(path)[:-4].rsplit("_", 2)
        truth, labels, k, seed = d["truth"], d["member_labels"], int(d["k"]), int(d["seeds"][0])
        row = out.setdefault(f"{dataset} ({mode})", {"ensembles": [], "single": [], "k": k,
                                                       **{m: [] for m in (*CONSENSUS, "best by agreement")}})
        row["ensembles"].append(seed)
        row["single"] += [adjusted_rand_score(truth, lab) for lab in labels]
        for method in CONSENSUS:
            cons = consensus_labels(labels, k, method=method, member_q=d["member_q"], seed=seed)
            row[method].append(adjusted_rand_score(truth, cons))
        crit = json.loads(str(d["criteria"]))
        row["best by agreement"].append(adjusted_rand_score(truth, labels[best_member(crit, "agreement")]))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("members_dir", help="the --save-members folder of benchmarks/accuracy.py")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    files = glob.glob(os.path.join(args.members_dir, "*.npz"))
    if not files:
        sys.exit(f"{args.members_dir} holds no saved ensembles (run benchmarks/accuracy.py --save-members first)")
    rows = compare(files)
    methods = [m for m in next(iter(rows.values())) if m not in ("ensembles", "single", "k")]
    lines = ["# Consensus of seed ensembles: the methods on the same members", "",
             f"`python benchmarks/consensus.py {args.members_dir}` ({time.strftime('%Y-%m-%d')}), on the members "
             "saved by `benchmarks/accuracy.py --save-members`.  ARI mean ± sd over the ensembles (single: over "
             "all members, each trained as a single run); in brackets the difference from the single-run mean in "
             "single-run sds.", "",
             "| dataset | k | ensembles x members | single run | " + " | ".join(methods) + " |",
             "|---" * (4 + len(methods)) + "|"]
    for name, r in rows.items():
        s = np.asarray(r["single"])
        sm, ssd = s.mean(), s.std(ddof=1)
        cells = []
        for m in methods:
            v = np.asarray(r[m])
            sd = v.std(ddof=1) if len(v) > 1 else 0.0
            cells.append(f"{v.mean():.3f} ± {sd:.3f} ({(v.mean() - sm) / ssd:+.2f})")
        lines.append(f"| {name} | {r['k']} | {len(r['ensembles'])} x {len(s) // len(r['ensembles'])} | "
                     f"{sm:.3f} ± {ssd:.3f} | " + " | ".join(cells) + " |")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"consensus{args.tag}.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, f"consensus{args.tag}.json"), "w") as fh:
        json.dump({"command": "python benchmarks/consensus.py " + " ".join(argv or sys.argv[1:]), "rows": rows}, fh,
                  indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
