"""Training data loader benchmark: images/s reading the node's encrypted outputs, beside
plain .npy files on local disk and pydicom decoding the original DICOM files, in one run.

    .venv/bin/python bench/loader_bench.py [--instances N] [--passes P] [--size S]

A fresh node (temp home, local store, fsync on, default recipe: 512² float16 outputs) gets
N CT phantoms of S² through ingest, and one worker processes them. Then, on the same images:

* encrypted store: ``node.ai.dataset.OutputDataset`` items (decrypt output.npy, float32
  tensor (1, 512, 512)), what pretraining and training read on a CPU; and the same items
  in the stored float16, as a GPU run takes them (converted on the device);
* plain .npy: the same arrays as .npy files on local disk, ``np.load`` + tensor;
* pydicom: the originals as .dcm files, ``dcmread`` + ``pixel_array`` + modality LUT + tensor
  (the paper's Table 2 reads DICOM with PyTorch at 103 ms per 512² image);
* the encrypted store through a torch DataLoader with 2 worker processes.

Each is the median of P passes over all images (first pass warms the page cache). Targets:
encrypted store at least 1.5x faster than pydicom decoding, and under 1 ms per 512² image.
Exit status 1 when a check could not run or an output was missing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pydicom  # noqa: E402
import torch  # noqa: E402
from pydicom.pixels import apply_modality_lut  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from node.ai import dataset  # noqa: E402
from node.api import Node  # noqa: E402
from node.processing.worker import Worker  # noqa: E402
from node.settings import load  # noqa: E402
from pipelines import synthetic  # noqa: E402

console = Console()
TARGET_RATIO, TARGET_MS = 1.5, 1.0


def timed(passes: int, n: int, one_pass: Callable[[], int]) -> float:
    """Median ms per image over ``passes`` passes (after one warm-up pass)."""
    one_pass()
    times = []
    for _ in range(passes):
        start = time.perf_counter()
        got = one_pass()
        times.append((time.perf_counter() - start) * 1000 / max(got, 1))
        if got != n:
            raise RuntimeError(f"a pass read {got} of {n} images")
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="loader-bench-") as tmp:
        root = Path(tmp)
        dicom_dir, npy_dir = root / "dicom", root / "npy"
        npy_dir.mkdir()
        console.print(f"storing and processing {args.instances} CT images of {args.size}²")
        with Node.from_settings(load(home=root / "home", environ={}), create_keys=True) as node:
            for ds in synthetic.ct_series(args.instances, size=args.size, seed=1):
                path = synthetic.write(ds, dicom_dir)
                node.write(path.read_bytes())
            counts = Worker(node.core).drain()
            records = dataset.select(node, include_blank=True)
            if len(records) != args.instances:
                console.print(f"[red]only {len(records)} of {args.instances} processed: "
                              f"{dict(counts)}[/]")
                return 1
            data = dataset.OutputDataset(node.core, records)
            data16 = dataset.OutputDataset(node.core, records, float32=False)
            for i, rec in enumerate(records):
                np.save(npy_dir / f"{i}.npy", node.read_output(rec))
            files = sorted(dicom_dir.glob("*.dcm"))
            npys = sorted(npy_dir.glob("*.npy"))
            n = len(records)

            def store_pass() -> int:
                return sum(1 for i in range(len(data)) if data[i].shape[-1] > 0)

            def store16_pass() -> int:
                return sum(1 for i in range(len(data16)) if data16[i].shape[-1] > 0)

            def npy_pass() -> int:
                return sum(1 for p in npys if torch.from_numpy(
                    np.load(p)[0].astype(np.float32)).unsqueeze(0).shape[-1] > 0)

            def dicom_pass() -> int:
                got = 0
                for p in files:
                    ds = pydicom.dcmread(p)
                    hu = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
                    got += torch.from_numpy(hu).unsqueeze(0).shape[-1] > 0
                return got

            def loader_pass() -> int:
                loader = torch.utils.data.DataLoader(data, batch_size=16, num_workers=2)
                return sum(len(batch) for batch in loader)

            results = {
                "encrypted store (OutputDataset)": timed(args.passes, n, store_pass),
                "encrypted store, float16 as stored": timed(args.passes, n, store16_pass),
                "plain .npy on local disk": timed(args.passes, n, npy_pass),
                "pydicom decoding the originals": timed(args.passes, n, dicom_pass),
            }
            try:
                results["encrypted store, DataLoader 2 workers"] = timed(
                    args.passes, n, loader_pass)
            except Exception as exc:  # reported, not hidden
                console.print(f"[yellow]DataLoader with workers: {type(exc).__name__}: {exc}[/]")
            size = tuple(data[0].shape)
    dicom = results["pydicom decoding the originals"]
    table = Table(title=f"Reading {n} training images {size} as tensors, one core",
                  title_justify="left")
    for column in ("reader", "ms / image", "images / s", "vs pydicom"):
        table.add_column(column, justify="left" if column == "reader" else "right")
    for name, ms in results.items():
        table.add_row(name, f"{ms:.3f}", f"{1000 / ms:.0f}", f"{dicom / ms:.2f}x")
    table.add_row("paper, Table 2 (PyTorch reading DICOM)", "103", f"{1000 / 103:.0f}", "")
    console.print(table)
    mark = {True: "[bold green]PASS[/]", False: "[bold red]MISS[/]"}
    for name in ("encrypted store (OutputDataset)", "encrypted store, float16 as stored"):
        ms = results[name]
        console.print(f"{name}: {dicom / ms:.2f}x pydicom decoding (target {TARGET_RATIO}x) "
                      f"{mark[dicom / ms >= TARGET_RATIO]}; {ms:.3f} ms per image "
                      f"(target < {TARGET_MS} ms) {mark[ms < TARGET_MS]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
