"""The paper's experiment at GPU scale: 256x256 phantoms, more patients, four label fractions,
bf16 mixed precision, on one CUDA device (sized for about 10 minutes on one H200).

    .venv/bin/python bench/paper_gpu.py                 # the GPU run (needs CUDA)
    .venv/bin/python bench/paper_gpu.py --smoke         # tiny, on the CPU: checks the code

Same protocol as ``bench/paper_experiment.py`` (disjoint unlabelled / labelled / test
patients, one dense DeepCluster pretraining of the shared encoder, paired seeds, a fixed step
budget, the last state scored, paired deltas with 95 % intervals, Dice-versus-step curves),
with: 256x256 images, 24 slices per patient, 120 unlabelled, 40 labelled and 20 test patients,
label fractions 2, 4, 10 and 40 of the 40 labelled patients (5, 10, 25, 100 %), the default
feature sizes (16 ... 256), batch 32, bf16 autocast, 400/400/600/800 steps, dense
pseudo-labels on the 32x32 grid of level 3 (the grid the small scale uses at 64x64). The runs
go one after another on the one device (``--workers 0``). Its time has not been measured (no
GPU was available when it was written): 80 runs of 550 steps on average, about 44,000 steps,
fit in 10 minutes only if a U-Net and a UNet++ step average under about 12 ms; if the first
runs print longer times, trim with ``--set 'steps=[300,300,400,500]'`` or ``--archs unet``.
``--smoke`` keeps every code path (bf16 autocast included, on the
CPU) at a size that takes a minute on two cores. Writes ``bench/out/paper_gpu.{json,png}``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.paper_experiment import Scale, configure, parser, run  # noqa: E402

GPU = Scale(
    image=256, slices=24, unlabelled=120, labelled=40, test=20,
    fractions=(2, 4, 10, 40), steps=(400, 400, 600, 800), seeds=5,
    features=(16, 32, 64, 128, 256), batch=32, lr=2e-3, clusters=48,
    pretrain_mode="dense", pretrain_epochs=12, pretrain_lr=0.01, pretrain_batch=32,
    dense_level=3, device="cuda", autocast="bfloat16", threads=4, evals=8,
)

SMOKE = replace(
    GPU, image=64, slices=4, unlabelled=6, labelled=6, test=2, fractions=(1, 2, 3, 6),
    steps=(4, 4, 4, 4), seeds=2, features=(4, 8, 16, 32, 64), batch=4, clusters=4,
    dense_level=2,
    pretrain_epochs=2, pretrain_batch=8, device="cpu", threads=1, evals=2,
)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="a tiny CPU run of every code path")
    p.set_defaults(workers=0)
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    base = SMOKE if args.smoke else GPU
    scale = configure(base, args)
    if scale.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device: run with --smoke to check the code on the CPU")
            return 2
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    run(scale, args.archs.split(","), args.workers, args.out,
        "paper_gpu_smoke" if args.smoke else "paper_gpu")
    return 0


if __name__ == "__main__":
    sys.exit(main())
