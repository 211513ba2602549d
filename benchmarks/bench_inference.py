"""CPU inference throughput of the network predictor (stage S1) and the cost of its halo.

1. **Untiled throughput** (the reference): each network (N2V, StarDist3D, U-Net) run once over a
   whole volume of shape ``--volume`` as a single tile; voxels/s = output voxels / seconds of the
   forward pass (the first, tracing call is excluded and reported separately).
2. **Halo overhead** for each block size of ``--blocks`` (and, (a) only, ``--interior-blocks``):
   (a) for an interior block, network
   input voxels / core voxels per network (grid-aligned tiles of core + halo) and read-region
   voxels / core voxels; (b) for the whole plan over the volume, the same sums (border blocks
   included); (c) the measured seconds of ``predict_block`` over the plan (N2V -> StarDist + U-Net
   + candidates) and its core voxels/s as a ratio to the untiled chain of the same run.
3. Receptive fields (measured) and the seconds the measurements took.

Models: ``--models bundled`` (the package's), a folder of ``stardist/ unet/ [n2v/]``, or
``random`` (default when none is shipped): untrained folders with StarDist's 3-D defaults
(96 rays, depth 2, grid (1, 2, 2)) and ``--filters`` first-level filters; an untrained network has
the cost of a trained one. Printed as JSON::

    python -m benchmarks.bench_inference [--volume 32,160,160] [--blocks 32,64,64 32,128,128]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _triple(text: str) -> tuple[int, int, int]:
    v = tuple(int(s) for s in text.split(","))
    if len(v) != 3:
        raise argparse.ArgumentTypeError(f"expected Z,Y,X, got {text!r}")
    return v  # type: ignore[return-value]


def _image(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    cells = (np.sin(z / 3.0) * np.sin(y / 5.0) * np.cos(x / 5.0) > 0.1) * 400 + 200
    return (cells + rng.poisson(80, shape)).astype(np.uint16)


def _resolve_models(spec: str, workdir: Path, filters: int) -> tuple[Path, str]:
    from vollseg_dask.errors import ModelNotFoundError
    from vollseg_dask.networks.folders import bundled_model_dir
    from vollseg_dask.predictors.network import write_random_model_folders

    if spec == "auto":
        try:
            return bundled_model_dir("stardist").parent, "bundled"
        except ModelNotFoundError:
            spec = "random"
    if spec == "bundled":
        return bundled_model_dir("stardist").parent, "bundled"
    if spec == "random":
        root = workdir / "models"
        write_random_model_folders(root, n2v=True, n_rays=96, grid=(1, 2, 2), stardist_depth=2, unet_depth=2,
                                   n2v_depth=2, n_filter=filters, output_gain=300.0, n2v_gain=3.0, seed=0)
        return root, f"random (untrained, 96 rays, depth 2, grid (1,2,2), {filters} filters)"
    return Path(spec), spec


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="auto", help="bundled | random | DIR (default: bundled, else random)")
    parser.add_argument("--volume", type=_triple, default=(32, 160, 160), help="volume Z,Y,X")
    parser.add_argument("--blocks", type=_triple, nargs="+", default=[(32, 64, 64), (32, 128, 128)],
                        help="block core shapes Z,Y,X")
    parser.add_argument("--interior-blocks", type=_triple, nargs="*", default=[(64, 256, 256), (128, 512, 512)],
                        help="larger block shapes whose interior-block overhead is computed (not run)")
    parser.add_argument("--filters", type=int, default=16, help="first-level filters of random models")
    parser.add_argument("--threads", type=int, default=None, help="TensorFlow intra-op threads")
    args = parser.parse_args(argv)
    if args.threads:
        os.environ["VOLLSEG_TF_THREADS"] = str(args.threads)

    import pandas as pd

    from vollseg_dask.networks._unet import normalize
    from vollseg_dask.plan import plan_blocks
    from vollseg_dask.predictors.network import NetworkPredictor, plan_network_tiles

    vol = tuple(args.volume)
    n_vox = int(np.prod(vol))
    img = _image(vol, 0)
    table = pd.DataFrame({"p1": [np.percentile(img, 1)], "p99.8": [np.percentile(img, 99.8)]})
    report: dict[str, Any] = {"volume": list(vol), "voxels": n_vox, "cpu_count": os.cpu_count(),
                              "loadavg_1min": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["VOLLSEG_CACHE_DIR"] = str(Path(tmp) / "cache")  # measure, do not reuse a cache
        root, desc = _resolve_models(args.models, Path(tmp), args.filters)
        report["models"] = desc
        pred = NetworkPredictor.from_models_dir(root, percentiles_table=table)
        t0 = time.perf_counter()
        rfs = pred.receptive_fields()
        report["receptive_field_seconds_total"] = round(time.perf_counter() - t0, 2)
        report["receptive_fields"] = {k: {"radius": list(v.radius), "halo": list(v.halo), "div": list(v.div),
                                          "grid": list(v.grid)} for k, v in rfs.items()}
        report["halo"] = list(pred.halo)

        # ---- 1. untiled throughput per network (one tile = whole volume padded to its divisibility)
        x = normalize(img, float(table["p1"][0]), float(table["p99.8"][0]))
        per_net: dict[str, Any] = {}
        for kind in pred.kinds:
            net = pred._network(kind)
            tile = plan_network_tiles(tuple(slice(0, n) for n in vol), div=net.div, halo=rfs[kind].halo,
                                      volume_shape=vol, max_tile_voxels=1 << 40)[0]
            from vollseg_dask.predictors.network import tile_input

            batch = tile_input(x, tuple(slice(0, n) for n in vol), tile.tile)[None, ..., None]
            net.forward(batch)  # warm-up (allocations; the trace was made by the measurement)
            times = []
            for _ in range(2):
                t0 = time.perf_counter()
                net.forward(batch)
                times.append(time.perf_counter() - t0)
            sec = min(times)
            per_net[kind] = {"seconds": round(sec, 3), "input_shape": list(tile.shape), "voxels_per_s": round(n_vox / sec),
                             "device": net.device}
        report["untiled"] = per_net

        full = tuple(slice(0, n) for n in vol)
        pred.predict_block(img, t=0, read=full, core=full, volume_shape=vol, prob_threshold=0.5)  # warm
        t0 = time.perf_counter()
        ref = pred.predict_block(img, t=0, read=full, core=full, volume_shape=vol, prob_threshold=0.5)
        chain_sec = time.perf_counter() - t0
        report["untiled_chain"] = {"seconds": round(chain_sec, 3), "voxels_per_s": round(n_vox / chain_sec),
                                   "candidates": int(len(ref.points)), "per_network_seconds": ref.info["seconds"]}

        # ---- 2. halo overhead per block size
        h = pred._stage_halos()
        post = tuple(max(a, b) for a, b in zip(h["stardist"], h["unet"], strict=True))
        rows = []
        for bs in list(args.blocks) + list(args.interior_blocks):
            bs = tuple(bs)
            run = bs in [tuple(b) for b in args.blocks]
            row: dict[str, Any] = {"block": list(bs), "run": run}
            # (a) an interior block of an unbounded volume
            big = tuple(4 * (b + 2 * hh) for b, hh in zip(bs, pred.halo, strict=True))
            core = tuple(slice(2 * (b + 2 * hh), 2 * (b + 2 * hh) + b) for b, hh in zip(bs, pred.halo, strict=True))
            core_vox = int(np.prod(bs))
            interior: dict[str, float] = {"read": round(float(np.prod([b + 2 * hh for b, hh in
                                                                      zip(bs, pred.halo, strict=True)])) / core_vox, 3)}
            for kind in pred.kinds:
                net = pred._network(kind)
                want = core if kind != "n2v" else tuple(slice(c.start - p, c.stop + p)
                                                        for c, p in zip(core, post, strict=True))
                tiles = plan_network_tiles(want, div=net.div, halo=h[kind], volume_shape=big,
                                           max_tile_voxels=pred._tiling()["max_tile_voxels"])
                interior[kind] = round(sum(int(np.prod(t.shape)) for t in tiles) / core_vox, 3)
            row["interior_input_per_core_voxel"] = interior
            if not run:
                rows.append(row)
                continue
            # (b)+(c) the whole plan over the volume, run
            plan = plan_blocks(vol, bs, pred.halo)
            read = 0
            t0 = time.perf_counter()
            max_diff = 0.0
            for b in plan:
                p = pred.predict_block(img[b.read], t=0, read=b.read, core=b.core, volume_shape=vol, prob_threshold=0.5)
                read += p.info["voxels_read"]
                max_diff = max(max_diff, float(np.abs(p.prob - ref.prob[b.core]).max()),
                               float(np.abs(p.foreground - ref.foreground[b.core]).max()))
            sec = time.perf_counter() - t0
            row.update({"blocks": len(plan), "plan_read_per_kept_voxel": round(read / n_vox, 3),
                        "seconds": round(sec, 3), "core_voxels_per_s": round(n_vox / sec),
                        "throughput_vs_untiled_chain": round(chain_sec / sec, 3),
                        "max_abs_diff_vs_untiled": max_diff})
            rows.append(row)
        report["tiled"] = rows
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
