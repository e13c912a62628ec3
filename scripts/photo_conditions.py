"""Held-out photos under hard conditions: pairs that measure a student on photos unlike the ones it trained on.

For each condition of `ghibligan.photo_variants.CONDITIONS` (dark: -2 EV, bright: +1 EV, noisy: σ 10 grey levels,
hazy: a 40 % veil, jpeg: quality 20), every photo of a make-pairs split is put through it and run through the
teachers, and the pairs are written as a make-pairs dataset of their own, ``OUTPUT_DIR/CONDITION`` (split ``train``).
The targets are the teachers' answers to the changed photo, so each dataset scores the student as the held-out
photos do:

    python scripts/photo_conditions.py --pairs runs/bundled-styles/pairs --output_dir runs/conditions \\
        --teacher toon:ghibli toon:toon toon:painterly
    python scripts/evaluate_fidelity.py --model ghibligan/pretrained/ghibli-styles --pairs runs/conditions/dark \\
        --split train

Each photo's noise is seeded by its key, so a re-run writes the same pairs (and resumes an interrupted one).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ghibligan.data import load_pairs_dataset
from ghibligan.pairs import make_pairs
from ghibligan.photo_variants import CONDITIONS, variant_seed, vary_photo
from ghibligan.teachers import make_teacher


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", required=True, help="make-pairs output whose photos to use")
    parser.add_argument("--split", default="validation", help="its split of held-out photos (validation)")
    parser.add_argument("--teacher", nargs="+", required=True, help="the teachers the pairs were made with")
    parser.add_argument(
        "--conditions", nargs="+", choices=sorted(CONDITIONS), default=list(CONDITIONS), help="(all of them)"
    )
    parser.add_argument("--output_dir", required=True, help="one dataset per condition is written under it")
    args = parser.parse_args(argv)

    rows = load_pairs_dataset(train_data_dir=args.pairs, split=args.split)[args.split]
    photos = [(row["source"], row["input_image"].convert("RGB")) for row in rows]
    teachers = [make_teacher(spec) for spec in args.teacher]
    failed = False
    for name in args.conditions:
        changed = [(key, vary_photo(image, variant_seed(key, 0), CONDITIONS[name])) for key, image in photos]
        out = Path(args.output_dir) / name
        report = make_pairs(changed, teachers if len(teachers) > 1 else teachers[0], out, max_side=None)
        print(f"{name}: {out} ({sum(report.written.values())} pairs written, {report.already_done} already done)")
        if report.failed:  # reported; the other photos and conditions are written
            print("\n".join(report.failed), file=sys.stderr)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
