# ruff: noqa: E501  (command lines of the cases)
"""A sweep of bad inputs through the CLI, each in its own process; prints what each one gave.

    python tests/tools/bad_input_sweep.py [WORKDIR] [SUBSTRING ...]

Builds tiny assets (model, TorchScript extractor, reference, broken files) and a study in WORKDIR
(default: a new temporary folder), then runs every case and flags a traceback ([TB ]), exit 0 ([OK0]:
read the case, some are legitimate), more than one stderr line ([MUL]) or a timeout. The cases that
matter are kept as tests in tests/test_bad_inputs.py; this is the wider net they were found with.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import pickle
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]


class Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("echo PWNED",))


def make_assets(d: Path) -> None:
    from helpers import TINY_SONG, tiny_precond
    from PIL import Image
    from storage_fixtures import make_search_assets

    from skiptune.nets.checkpoints import save_checkpoint

    make_search_assets(d)
    # a 3-channel tiny model
    small = {**TINY_SONG, "model_channels": 8, "attn_resolutions": []}
    cfg = dict(img_resolution=8, img_channels=3, label_dim=0, model_type="SongUNet", **small)
    save_checkpoint(
        tiny_precond("SongUNet", img_resolution=8, img_channels=3, seed=1, **small), d / "rgb.pt", config=cfg
    )
    cfg = dict(img_resolution=16, img_channels=1, label_dim=0, model_type="SongUNet", **small)
    save_checkpoint(
        tiny_precond("SongUNet", img_resolution=16, img_channels=1, seed=1, **small),
        d / "res16.pt",
        config=cfg,
    )
    (d / "empty.npz").write_bytes(b"")
    good = (d / "reference.npz").read_bytes()
    (d / "trunc.npz").write_bytes(good[: len(good) // 2])
    (d / "evil.pt").write_bytes(pickle.dumps(Evil()))
    torch.save({"x": Evil()}, d / "evilzip.pt")
    (d / "garbage.pt").write_bytes(b"not a torch file at all")
    (d / "notdb.db").write_bytes(b"this is not a sqlite database" * 100)
    (d / "pngs").mkdir(exist_ok=True)
    for i in range(3):
        Image.fromarray(np.random.randint(0, 255, (8, 8), dtype=np.uint8), "L").save(d / "pngs" / f"{i}.png")
    (d / "pngs" / "bad.png").write_bytes(b"\x89PNG garbage")
    np.savez(d / "imgs.npz", images=np.random.randint(0, 255, (20, 8, 8, 1), dtype=np.uint8))
    np.savez(d / "noimages.npz", images=np.zeros((0, 8, 8, 1), np.uint8))


def cases(root: Path) -> list[str]:
    A, W, GOOD = f"{root}/assets", root / "work", f"sqlite:///{root}/good.db"
    W.mkdir(exist_ok=True)
    M = f"--model {A}/tiny.pt"
    X = f"--extractor torchscript:{A}/features.pt"
    R = f"--reference {A}/reference.npz"
    EV = f"eval {M} --nfe 3 --sampler euler {X} {R} --n-samples 8 --device cpu --no-progress"
    SC = f"study create {M} --sampler euler --nfe 3 {X} {R} --n-samples 16 --rungs 8,16 --trials 2 --no-validate"
    SA = f"sample {M} --nfe 3 --sampler euler --seeds 0-3 --device cpu"
    ST = f"stats --extractor torchscript:{A}/features.pt --no-progress --device cpu"
    return [
        # storage URLs
        "best --model tiny --nfe 3 --storage postgresql://u@localhost:abc/db",
        "best --model tiny --nfe 3 --storage postgresql://u@localhost:99999/db",
        "best --model tiny --nfe 3 --storage ''",
        "table --model tiny --storage ''",
        f"best --model tiny --nfe 3 --storage sqlite:///{W}/typo.db",
        f"table --model tiny --storage sqlite:///{W}/typo2.db",
        f"report --model tiny --out {W}/rep0 --storage sqlite:///{W}/typo3.db",
        f"study list --storage sqlite:///{W}/typo4.db",
        f"best --model tiny --nfe 3 --storage sqlite:///{A}/notdb.db",
        f"table --model tiny --storage sqlite:///{A}/notdb.db",
        f"best --model tiny --nfe 3 --storage sqlite:///{A}",
        "best --model tiny --nfe 3 --storage mysql://x/y",
        "best --model tiny --nfe 3 --storage sqlite+foo:///x.db",
        "best --model tiny --nfe 3 --storage grpc://localhost",
        "best --model tiny --nfe 3 --storage grpc://localhost:abc",
        "best --model tiny --nfe 3 --storage postgresql://u:pw@127.0.0.1:1/db",
        "best --model tiny --nfe 3 --storage not-a-url",
        f"best --model nosuch --nfe 3 --storage {GOOD}",
        f"best --model tiny --nfe 4 --storage {GOOD}",
        f"best --model tiny --nfe -3 --storage {GOOD}",
        f"best --model tiny --nfe 3 --study nosuch --storage {GOOD}",
        f"table --model nosuch --storage {GOOD}",
        f"study list --model nosuch --storage {GOOD}",
        # eval
        f"{EV} --rho -0.5 1",
        f"{EV} --rho 1 50",
        f"{EV} --rho 1 2.5",
        f"{EV} --rho nan 1",
        f"{EV} --rho 1 inf",
        f"{EV} --rho a b",
        f"{EV} --sigma-window 5 1",
        f"{EV} --sigma-window -1 1",
        f"{EV} --batch-size 0",
        f"{EV} --batch-size -5",
        f"{EV} --n-samples 0",
        f"{EV} --n-samples 1",
        f"{EV} --rungs 4,2",
        f"{EV} --rungs 1,8",
        f"{EV} --rungs abc",
        f"{EV} --seed-base -1",
        f"{EV} --device cuda",
        f"{EV} --device tpu",
        f"{EV} --device cuda:x",
        f"eval --model {A}/rgb.pt --nfe 3 --sampler euler {X} {R} --n-samples 8 --device cpu --no-progress",
        f"eval --model {A}/res16.pt --nfe 3 --sampler euler {X} {R} --n-samples 8 --device cpu --no-progress",
        f"eval {M} --nfe 3 --sampler euler {X} --reference {A}/empty.npz --n-samples 8 --device cpu",
        f"eval {M} --nfe 3 --sampler euler {X} --reference {A}/trunc.npz --n-samples 8 --device cpu",
        f"eval {M} --nfe 3 --sampler euler {X} --reference {A}/garbage.pt --n-samples 8 --device cpu",
        f"eval {M} --nfe 3 --sampler euler {X} --reference {A}/evil.pt --n-samples 8 --device cpu",
        f"eval {M} --nfe 3 --sampler euler {X} --reference {A}/nosuch.npz --n-samples 8 --device cpu",
        f"eval {M} --nfe 3 --sampler euler {X} --reference {A} --n-samples 8 --device cpu",
        f"eval {M} --nfe 3 --sampler euler --extractor torchscript:{A}/evil.pt {R} --n-samples 8 --device cpu",
        f"eval {M} --nfe 3 --sampler euler --extractor torchscript:{A}/garbage.pt {R} --n-samples 8 --device cpu",
        f"eval {M} --nfe 3 --sampler euler --extractor nosuch {R} --n-samples 8 --device cpu",
        f"eval {M} --nfe 3 --sampler euler --extractor fmnist-classifier --extractor-weights {A}/evil.pt {R} --n-samples 8 --device cpu",
        f"eval {M} --nfe 3 --sampler euler --extractor fmnist-classifier --extractor-weights {A}/garbage.pt {R} --n-samples 8 --device cpu",
        f"eval {M} --nfe 3 --sampler euler --extractor fmnist-classifier --extractor-weights {A}/tiny.pt {R} --n-samples 8 --device cpu",
        f"eval {M} --nfe 3 --sampler euler --extractor inception-v3-compat --extractor-weights {A}/evil.pt {R} --n-samples 8 --device cpu",
        f"eval {M} --nfe 3 --sampler euler --extractor fmnist-classifier {R} --n-samples 8 --device cpu",
        f"eval --model {A}/evil.pt --nfe 3 --sampler euler {X} {R} --n-samples 8 --device cpu",
        f"eval --model {A}/garbage.pt --nfe 3 --sampler euler {X} {R} --n-samples 8 --device cpu",
        f"eval --model {A}/empty.npz --nfe 3 --sampler euler {X} {R} --n-samples 8 --device cpu",
        f"eval --model nosuchmodel --nfe 3 --sampler euler {X} {R} --n-samples 8 --device cpu",
        f"eval {M} --nfe 0 --sampler euler {X} {R} --n-samples 8 --device cpu",
        f"eval {M} --nfe 4 --sampler heun {X} {R} --n-samples 8 --device cpu",
        f"eval {M} --nfe 3 --sampler euler {X} --reference demo --n-samples 8 --device cpu",
        # sample
        f"{SA} --out {W}/grid",
        f"{SA} --out {W}/grid.txt",
        f"{SA} --out {W}/nosuchdir/x/grid.png",
        f"{SA} --out {A}/tiny.pt/grid.png",
        f"{SA} --out {W}",
        f"{SA} --outdir {A}/tiny.pt",
        f"{SA} --out /proc/grid.png",
        f"{SA} --rho -1 1 --out {W}/g1.png",
        f"{SA} --rho 1 9 --out {W}/g2.png",
        f"{SA} --seeds 5-1 --out {W}/g3.png",
        f"{SA} --seeds '' --out {W}/g4.png",
        f"{SA} --batch-size 0 --out {W}/g5.png",
        f"{SA} --class 3 --out {W}/g6.png",
        f"{SA} --class -1 --out {W}/g7.png",
        f"{SA} --sigma-window 1 2 --out {W}/g8.png",
        f"{SA} --tuned --storage sqlite:///{W}/typo5.db --out {W}/g9.png",
        f"{SA} --tuned --storage {GOOD} --nfe 5 --out {W}/g10.png",
        f"{SA} --nfe 0 --out {W}/g11.png",
        f"sample --model {A}/rgb.pt --nfe 3 --sampler euler --seeds 0-3 --device cpu --rho 1 1 --sigma-window 0.5 0.1 --out {W}/g12.png",
        # stats
        f"{ST} --source {A}/pngs --out {W}/s1.npz --no-cache",
        f"{ST} --source {A}/noimages.npz --out {W}/s2.npz --no-cache",
        f"{ST} --source {A}/empty.npz --out {W}/s3.npz --no-cache",
        f"{ST} --source {A}/trunc.npz --out {W}/s4.npz --no-cache",
        f"{ST} --source {A}/imgs.npz --out /proc/s5.npz --no-cache",
        f"{ST} --source {A}/imgs.npz --out {A}/tiny.pt/s6.npz --no-cache",
        f"{ST} --source {A}/imgs.npz --out {W} --no-cache",
        f"{ST} --source {A}/imgs.npz --out {W}/s7.txt --no-cache",
        f"{ST} --source {A}/imgs.npz --out {W}/s8.npz --resolution 4 --no-cache",
        f"{ST} --source {A}/imgs.npz --out {W}/s9.npz --batch-size 0 --no-cache",
        f"{ST} --source nosuch --out {W}/s10.npz",
        f"{ST} --source fmnist:nosuch --out {W}/s11.npz",
        f"{ST} --source {A}/tiny.pt --out {W}/s12.npz",
        f"SKIPTUNE_CACHE={A}/tiny.pt {ST} --source {A}/imgs.npz --out {W}/s13.npz",
        f"SKIPTUNE_CACHE=/proc/cache {ST} --source {A}/imgs.npz --out {W}/s14.npz",
        f"SKIPTUNE_FMNIST_ROOT=/nonexistent {ST} --source fmnist:test --out {W}/s15.npz",
        # study create
        f"{SC} --rho-bottom-range -1 1 --storage sqlite:///{W}/c1.db",
        f"{SC} --rho-top-range 0.5 50 --storage sqlite:///{W}/c2.db",
        f"{SC} --rho-top-range 1 0.5 --storage sqlite:///{W}/c3.db",
        f"{SC} --sigma-window-range 0 80 --storage sqlite:///{W}/c4.db",
        f"{SC} --trials 0 --storage sqlite:///{W}/c5.db",
        f"{SC} --trials -3 --storage sqlite:///{W}/c6.db",
        f"{SC} --seed-base -1 --storage sqlite:///{W}/c7.db",
        f"study create --model {A}/rgb.pt --sampler euler --nfe 3 {X} {R} --n-samples 16 --no-validate --storage sqlite:///{W}/c8.db",
        f"study create --model {A}/res16.pt --sampler euler --nfe 3 {X} {R} --n-samples 16 --no-validate --storage sqlite:///{W}/c9.db",
        f"{SC} --validate-top-k 0 --storage sqlite:///{W}/c10.db".replace("--no-validate", ""),
        f"{SC} --validate-blocks 1 --storage sqlite:///{W}/c11.db".replace("--no-validate", ""),
        f"{SC} --validate-samples -5 --storage sqlite:///{W}/c12.db".replace("--no-validate", ""),
        f"{SC} --gain-threshold -1 --storage sqlite:///{W}/c13.db".replace("--no-validate", ""),
        f"{SC} --growth-edge 2 --storage sqlite:///{W}/c14.db".replace("--no-validate", ""),
        f"{SC} --growth-trials -1 --storage sqlite:///{W}/c15.db".replace("--no-validate", ""),
        f"{SC} --nfe 3,abc --storage sqlite:///{W}/c16.db",
        f"{SC} --storage sqlite:///{A}/notdb.db",
        f"{SC} --storage sqlite:///{W}/nodir/c17.db",
        # worker
        f"worker {M} --max-trials -1 --device cpu --storage {GOOD}",
        f"worker {M} --max-trials 0 --device cpu --storage {GOOD}",
        f"worker {M} --devices 0 --storage {GOOD}",
        f"worker {M} --device cuda --storage {GOOD}",
        f"worker {M} --nfe abc --storage {GOOD}",
        f"worker {M} --batch-size 0 --storage {GOOD}",
        f"worker {M} --grace 10 --heartbeat 30 --storage {GOOD}",
        f"worker --model {A}/evil.pt --device cpu --storage {GOOD}",
        f"worker {M} --device cpu --storage sqlite:///{W}/typo6.db --max-trials 1",
        # proxy / report / demo / train / validate
        f"proxy --port 99999 --storage {GOOD}",
        f"proxy --port -1 --storage {GOOD}",
        f"proxy --port 0 --storage {GOOD}",
        f"report --model tiny --out {A}/tiny.pt --storage {GOOD}",
        f"report --model tiny --out /proc/rep --storage {GOOD}",
        f"report --model nosuch --out {W}/rep2 --storage {GOOD}",
        f"demo --out {A}/tiny.pt",
        "demo --out /proc/demo",
        "demo --workers 0",
        f"demo --nfe abc --out {W}/demo2",
        f"demo --n-samples 0 --out {W}/demo3",
        f"demo --rungs 9,1 --out {W}/demo4",
        "validate --help",
        f"validate --model tiny --nfe 3 --sampler euler --storage sqlite:///{W}/typo7.db",
        f"validate --model tiny --nfe 3 --sampler euler --validate-top-k 0 --storage {GOOD}",
        f"validate --model tiny --nfe 3 --sampler euler --validate-blocks 1 --storage {GOOD}",
        f"validate --model nosuch --nfe 3 --storage {GOOD}",
        "validate --model tiny --nfe 3 --sampler euler --storage ''",
        f"train classifier --out {A}/tiny.pt/c.pt --epochs 1",
        f"train classifier --out {W}/c.pt --epochs -1",
        f"train classifier --out {W}/c2.pt --data /nonexistent",
        f"train reference-stats --out {W}/r.txt --data /nonexistent",
        f"train evaluate --model {A}/evil.pt --nfe 3 --samples 8",
        f"train diffusion --out {W}/d.pt --steps 0",
        f"train diffusion --out {W}/d2.pt --batch-size 0 --steps 1",
        f"{SA} --out {W}/g13.png --batch-size -3",
        f"{SA} --seeds 0-3,x --out {W}/g14.png",
        f"{SA} --sampler dpmpp_2m --nfe 0 --out {W}/g15.png",
        f"{SA} --rho 1 1 --sigma-window 0 inf --out {W}/g16.png",
        f"{SA} --rho 1 1 --sigma-window nan 1 --out {W}/g17.png",
        f"{SA} --device cuda:7 --out {W}/g18.png",
        f"{EV} --rho 2 2",
        f"{EV} --rho 0 0",
        f"{EV} --json --rho 1 1.5",
        f"{EV} --sigma-window 0.1 nan",
        f"{EV} --n-samples 4 --rungs 2,4,8",
        f"{EV} --seed-base 99999999999999999999",
        f"eval {M} --nfe 3 --sampler euler {X} --reference {A}/imgs.npz --n-samples 8 --device cpu",
        f"eval {M} --nfe 3 --sampler euler {X} --reference {A}/noimages.npz --n-samples 8 --device cpu",
        f"{ST} --source {A}/imgs.npz --out {W}/s16.npz --resolution 16 --no-cache",
        f"{ST} --source {A}/imgs.npz --out {W}/s17.npz --resolution -1 --no-cache",
        f"{ST} --source {A}/pngs/0.png --out {W}/s18.npz",
        f"{ST} --source fmnist:train --extractor nosuch --out {W}/s19.npz",
        f"{SC} --n-samples -5 --storage sqlite:///{W}/c18.db",
        f"{SC} --rungs 8,8 --storage sqlite:///{W}/c19.db",
        f"{SC} --search nosuch --storage sqlite:///{W}/c20.db",
        f"{SC} --rho-top-range 0.5 2 --storage sqlite:///{W}/c21.db",
        f"{SC} --rho-top-range nan 1 --storage sqlite:///{W}/c22.db",
        f"{SC} --sigma-window-range 1 0.5 --storage sqlite:///{W}/c23.db",
        f"{SC} --storage postgresql://postgres@127.0.0.1:5432/nosuchdb_skiptune",
        f"{SC} --reference {A}/evilzip.pt --storage sqlite:///{W}/c24.db",
        f"worker {M} --heartbeat 0 --storage {GOOD}",
        f"worker {M} --precision fp8 --storage {GOOD}",
        f"worker {M} --devices 0-1 --storage {GOOD}",
        f"worker {M} --devices x --storage {GOOD}",
        f"worker {M} --device cpu --storage sqlite:///{A}/notdb.db",
        f"worker {M} --device cpu --storage grpc://127.0.0.1:1",
        f"best --model tiny --nfe 3 --sampler euler --storage {GOOD} --json",
        "table --model tiny --storage postgresql://postgres@127.0.0.1:5432/nosuchdb_skiptune",
        f"report --model tiny --out {W}/rep3 --storage sqlite:///{A}/notdb.db",
        f"proxy --host nosuch.invalid --port 13999 --storage {GOOD}",
        "proxy --storage grpc://localhost:13000",
        f"demo --out {W}/demo5 --trials -1",
        f"demo --out {W}/demo6 --storage ''",
        f"demo --out {W}/demo7 --storage mysql://x/y",
    ]


def run(case: str, cwd: Path) -> tuple[str, object, bool, list[str], list[str]]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    parts = shlex.split(case)
    while parts and "=" in parts[0] and not parts[0].startswith("-"):
        key, value = parts.pop(0).split("=", 1)
        env[key] = value
    try:
        p = subprocess.run(
            [sys.executable, "-m", "skiptune", *parts],
            capture_output=True,
            text=True,
            timeout=90,
            env=env,
            cwd=cwd,
        )
        rc: object = p.returncode
        err, out = p.stderr, p.stdout
    except subprocess.TimeoutExpired:
        rc, err, out = "TIMEOUT", "", ""
    lines = [line for line in err.strip().splitlines() if line.strip() and " INFO " not in line]
    return case, rc, "Traceback" in err, lines, out.strip().splitlines()[-1:]


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="skiptune-sweep-"))
    make_assets(root / "assets")
    a = root / "assets"
    create = (
        f"study create --model {a}/tiny.pt --sampler euler --nfe 3 --extractor torchscript:{a}/features.pt"
    )
    create += f" --reference {a}/reference.npz --n-samples 16 --rungs 8,16 --trials 2 --no-validate"
    for argv in (create, f"worker --model {a}/tiny.pt --device cpu"):
        subprocess.run([sys.executable, "-m", "skiptune", *argv.split(), "--storage", f"sqlite:///{root}/good.db"],
                       check=True, capture_output=True, env=dict(os.environ, PYTHONPATH=str(REPO)))  # fmt: skip
    wanted = sys.argv[2:]
    todo = [c for c in cases(root) if not wanted or any(w in c for w in wanted)]
    with cf.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda c: run(c, root / "work"), todo))
    flagged = 0
    for case, rc, tb, lines, out in results:
        flag = "TB " if tb else "OK0" if rc == 0 else "MUL" if len(lines) != 1 or rc == "TIMEOUT" else "   "
        flagged += flag != "   "
        print(f"[{flag}] rc={rc} {case[:150]}")
        for line in lines[-1:] if tb else lines[:3]:
            print("       ", line[:300])
        if rc == 0:
            print("        out:", out)
    print(f"{len(results)} cases, {flagged} flagged")


if __name__ == "__main__":
    main()
