"""What every method of the book costs, as ratios measured in one run.

    python tests/benchmarks/benchmark.py                 # all models, batch 1 and 8, CPU (and GPU if any)
    python tests/benchmarks/benchmark.py --quick         # ShapesNet only (a minute; leaves RESULTS.md alone)
    python tests/benchmarks/benchmark.py --readme        # also rewrite the tables in README.md
    python tests/benchmarks/benchmark.py --devices cuda --readme   # the GPU's table alone

Speed does not depend on the weights, so VGG16 and ResNet50 are built with random weights
(``weights=None``: no download). For each model, batch size and device, every method runs on the
same input, in rounds: one round runs every method of a group once, and the benchmark keeps each
method's fastest round (the one least disturbed by other processes on a shared machine): at least
``--rounds`` rounds, and more (up to 40, about 20 s per group) where a round is quick, as on
ShapesNet, whose calls of a few milliseconds are the easiest to disturb. The groups: the methods of
one forward and one backward pass with their references (forward, floor, bare-torch Grad-CAM),
whose rounds are short, so that many fit; the methods of n passes with n floors in a row; Score-CAM
and the class images. Each time is reported as a ratio to

* ``fwd``: one forward pass under ``torch.no_grad()``;
* ``floor``: one forward pass plus one backward pass to the input (``torch.autograd.grad`` of the
  target scores with respect to ``x``): the least that any gradient method can cost.

Two more reference rows time the same forward pass and floor on the input laid out channels-last
(``x.contiguous(memory_format=torch.channels_last)``): on a CPU, oneDNN's convolutions are faster
for that layout (on 2026-12-07, 2 threads of an Intel Xeon: ShapesNet's forward pass about 0.7 x
at batch 1 and 0.5 x at batch 8, VGG16's floor 0.8 x at batch 1, ResNet50's 0.85 x at batch 8).
The helpers pass the caller's layout on, so a reader who wants that speed lays out the input so;
the ratios of the methods stay against the usual (contiguous) layout.

Integrated gradients and SmoothGrad with ``n`` steps or samples are held against ``n`` floors
timed in a row, one call as long as theirs: the fastest of many short calls sits further below
their typical time than the fastest of as many long ones, so ``n`` times the fastest single floor
would make any method of ``n`` passes look a few percent slower than it is.

The goals of the book (issue "Speed") are printed next to the measured ratios; a ratio that misses
its goal is marked with ``!``. This is a measurement, not a test: it is not part of the test run.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from helpers import cam, features, gradients, hooks, lrp, models, shapes, synthesis  # noqa: E402

CHANNELS_LAST_FWD = "reference: forward pass, input channels-last"
CHANNELS_LAST_FLOOR = "reference: floor, input channels-last"
SIZES = {"vgg16": 224, "resnet50": 224, "shapesnet": shapes.SIZE}
FILTER_LAYER = {"vgg16": "features.19", "resnet50": "layer3", "shapesnet": "features.8"}


def build(name: str, device) -> torch.nn.Module:
    if name == "shapesnet":
        model = shapes.load_model("shapesnet")
    else:
        model = models._build_torchvision(name, None)
    return model.to(device).eval()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_of(fns: dict, rounds: int, device, budget: float = 20.0, most: int = 40) -> dict:
    """Each function's fastest time over interleaved rounds (after one warm-up round).

    At least ``rounds`` rounds; where one round is quick (ShapesNet: well under a second), more,
    up to ``most`` or about ``budget`` seconds in all: a call of a few milliseconds is easily
    disturbed by other processes, and the fastest of many calls is the one they left alone. A
    call under 50 ms is timed right after an untimed call of the same function: otherwise it
    pays for the memory traffic of whatever ran before it (a batched SmoothGrad evicts the
    caches and returns pages that the next call faults in again), and the order of the methods,
    not their cost, would decide their ratios. A widget that is moved calls the same method again
    and again, which is what this measures. Each round starts one method further down the list
    than the round before, so that no method always runs right after the same one: a long call
    that always followed the same neighbour would pay for that neighbour's freed memory in every
    round (on 2026-12-08 vanilla read 1.15 and 1.17 x floor at VGG16 batch 1 in two runs that kept
    the order, though it does the floor's work: 1.00 when the two alternated).
    """
    times = {k: [] for k in fns}
    items = list(fns.items())
    r, planned = 0, rounds + 1
    while r < planned:
        started = time.perf_counter()
        shift = r % len(items)                      # rotated: each method follows each other one
        for k, fn in items[shift:] + items[:shift]:
            if times[k] and times[k][-1] < 0.05:    # a short call: run it once untimed before,
                fn()                                # so it does not pay for its predecessor's
            sync(device)                            # memory traffic (caches, freed pages)
            t0 = time.perf_counter()
            fn()
            sync(device)
            if r:                                   # round 0 warms up (allocator, lazy init)
                times[k].append(time.perf_counter() - t0)
        if r == 1:                                  # a warm round: how many fit in the budget
            planned = 1 + max(rounds, min(most, int(budget / (time.perf_counter() - started))))
        r += 1
    return {k: min(v) for k, v in times.items()}


def floor_fn(model, x, target):
    def run():
        xx = x.detach().clone().requires_grad_(True)
        with hooks.frozen(model):
            logits = model(xx)
            score = logits.gather(1, target[:, None]).sum()
            torch.autograd.grad(score, xx)
    return run


def cam_floor_fns(model, x, target, other, layer):
    """Bare-torch references for Grad-CAM: a forward whose graph starts at ``layer`` (its output made
    a leaf, as the helper does) and one backward from the target scores to that leaf; and, on a
    graph kept from one such forward, the backward alone for another class (re-targeting). What
    the helper adds on top of these is its overhead; these themselves are the physics."""
    module = models.layer(model, layer)
    leaf = {}

    def as_leaf(_m, _i, out):
        leaf["A"] = out.detach().requires_grad_(True)
        return leaf["A"].clone()

    index = torch.arange(len(x), device=x.device)
    kept = {}

    def run():
        with hooks.frozen(model):
            h = module.register_forward_hook(as_leaf)
            try:
                logits = model(x)
            finally:
                h.remove()
            torch.autograd.grad(logits[index, target].sum(), leaf["A"])

    with hooks.frozen(model):
        h = module.register_forward_hook(as_leaf)
        try:
            kept["logits"] = model(x)
        finally:
            h.remove()
        kept["A"] = leaf["A"]
    o = torch.tensor(other, device=x.device)

    def retarget():
        torch.autograd.grad(kept["logits"][index, o].sum(), kept["A"], retain_graph=True)

    return {"grad_cam floor: fwd + bwd to the layer (bare torch)": run,
            "re-target floor: bwd to the layer (bare torch)": retarget}


def repeated(fn, n: int):
    """``fn`` called ``n`` times in a row, as one timed call."""
    def run():
        for _ in range(n):
            fn()
    return run


def forward_fn(model, x):
    def run():
        with torch.no_grad():
            model(x)
    return run


def filter_fns(opt):
    """One step of FilterOptimizer, and its floor: the same prefix network forward and back to the
    input, with nothing else (both inside the optimizer's context, whose hook stops the forward)."""
    x0 = opt.image().detach().clone()
    chans = torch.tensor(opt.channels, device=x0.device)
    index = torch.arange(len(opt.channels), device=x0.device)

    def floor():
        xx = x0.clone().requires_grad_(True)
        act = opt._run(xx)
        torch.autograd.grad(act[index, chans].mean(), xx)
    return {"filter visualization step": opt.step, "filter step floor (prefix fwd+bwd)": floor}


def rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except OSError:                                  # not Linux
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_growth(model, layer, size, device, steps=500) -> dict:
    """Resident memory (CPU) or peak allocated memory (GPU) at optimisation step 10 and step ``steps``."""
    with features.FilterOptimizer(model, layer, channel=[0], steps=steps, size=(size, size)) as opt:
        at = {}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for t in range(1, steps + 1):
            opt.step()
            if t in (10, steps):
                sync(device)
                at[t] = (torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda"
                         else rss_mb())
    return at


def measure(name: str, batch: int, device, rounds: int, n: int, score_cam: bool, budget: float = 20.0) -> dict:
    torch.manual_seed(0)
    model = build(name, device)
    size = SIZES[name]
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        target = model(x).argmax(1)
    t = target.tolist()
    other = [(c + 1) % len(models.class_names(model)) for c in t]
    last = models.last_conv_layer(model)
    cached = cam.Cached(model, x, last)
    floor = floor_fn(model, x, target)
    fns = {
        "fwd": forward_fn(model, x),
        "floor": floor,
        nfloors(n): repeated(floor, n),
        "vanilla": lambda: gradients.vanilla(model, x, t),
        "guided": lambda: gradients.guided(model, x, t),
        "deconvnet": lambda: gradients.deconvnet(model, x, t),
        "saliency": lambda: gradients.saliency(model, x, t),
        "grad_x_image": lambda: gradients.grad_x_image(model, x, t),
        f"integrated_gradients (n={n})": lambda: gradients.integrated_gradients(
            model, x, t, steps=n, progress=False),
        f"smoothgrad (n={n})": lambda: gradients.smoothgrad(model, x, t, samples=n, progress=False),
        # references, not methods: the same forward pass and floor on an input laid out channels-last
        # (the helpers take the caller's layout as it is; the README's notes say what this shows)
        CHANNELS_LAST_FWD: forward_fn(model, x_cl),
        CHANNELS_LAST_FLOOR: floor_fn(model, x_cl, target),
        "grad_cam": lambda: cam.grad_cam(model, x, t, last),
        "grad_cam re-target (cached)": lambda: cached.grad_cam(other),
        **cam_floor_fns(model, x, target, other, last),
        "grad_cam_pp": lambda: cam.grad_cam_pp(model, x, t, last),
        "layer_cam": lambda: cam.layer_cam(model, x, t, last),
        "guided_grad_cam": lambda: cam.guided_grad_cam(model, x, t, last),
    }
    if name != "vgg16":                              # CAM needs global average pooling
        fns["cam"] = lambda: cam.cam(model, x, t, last)
    if name != "resnet50":                           # LRP's rules are written for plain conv nets
        fns["lrp (composite)"] = lambda: lrp.lrp(model, x, t, rule="composite")
    if score_cam:
        fns["score_cam"] = lambda: cam.score_cam(model, x, t, last, progress=False)
    layer = FILTER_LAYER[name]
    if batch == 1:
        k = 6
        fns[f"class_image ({k} steps)"] = lambda: synthesis.class_image(model, t[0], steps=k, progress=False)
        fns["class_image (1 step)"] = lambda: synthesis.class_image(model, t[0], steps=1, progress=False)
        if device.type == "cuda":                  # batching vs n sequential passes
            fns[f"integrated_gradients (n={n}, batch_size=1)"] = lambda: gradients.integrated_gradients(
                model, x, t, steps=n, batch_size=1, progress=False)
            fns[f"smoothgrad (n={n}, batch_size=1)"] = lambda: gradients.smoothgrad(
                model, x, t, samples=n, batch_size=1, progress=False)
    # three groups, each timed in rounds of its own: the one-pass methods with their references
    # (a round of them is quick, so many rounds fit the budget and their fastest is reliable);
    # the n-pass methods with n floors in a row; the rest (Score-CAM, class images)
    many = [nfloors(n)] + [k for k in fns if k.startswith(("integrated_gradients", "smoothgrad"))]
    rest = [k for k in fns if k.startswith(("score_cam", "class_image"))]
    groups = [[k for k in fns if k not in many + rest], many, rest]
    best = {}
    for group in groups:
        if group:
            best.update(best_of({k: fns[k] for k in group}, rounds, device, budget))
    with features.FilterOptimizer(model, layer, channel=list(range(batch)), steps=0, size=(size, size)) as opt:
        best.update(best_of(filter_fns(opt), rounds, device, budget))
    if batch == 1:
        k = 6   # the cost of a step without the set-up: (6 steps - 1 step) / 5
        best["class_image step"] = (best.pop(f"class_image ({k} steps)") - best.pop("class_image (1 step)")) / (k - 1)
    cached = None                                    # frees the cached activations (the lambdas hold this name)
    gc.collect()
    return {"model": name, "batch": batch, "device": device.type, "n": n, "times": best,
            "memory": memory_growth(model, layer, size, device) if batch == 1 else None}


def nfloors(n: int) -> str:
    return f"{n} floors in a row"


def goals(n: int) -> dict:
    """Method -> (reference, largest ratio allowed): the goals of the speed issue."""
    g = {m: ("floor", 1.05) for m in ("vanilla", "guided", "deconvnet", "saliency")}
    g["grad_cam"] = ("fwd", 1.1)
    g["grad_cam re-target (cached)"] = ("fwd", 0.1)
    g[f"integrated_gradients (n={n})"] = (nfloors(n), 1.05)     # 1.05 x n x the floor
    g[f"smoothgrad (n={n})"] = (nfloors(n), 1.05)
    g["filter visualization step"] = ("filter step floor (prefix fwd+bwd)", 1.1)
    return g


def table(results: list) -> str:
    """One markdown table: rows are methods, columns model/batch/device, cells 'x fwd / x floor'."""
    cols = [(r["model"], r["batch"], r["device"]) for r in results]
    methods = []
    for r in results:
        methods += [m for m in r["times"] if m not in methods and m not in ("fwd", "floor")]
    head = "| method | " + " | ".join(f"{m} b{b} {d}" for m, b, d in cols) + " | goal |"
    lines = [head, "|" + "---|" * (len(cols) + 2)]
    lines.append("| one forward pass (s) | " + " | ".join(f"{r['times']['fwd']:.4f}" for r in results) + " | |")
    lines.append("| floor: forward + input gradient (x fwd) | "
                 + " | ".join(f"{r['times']['floor'] / r['times']['fwd']:.2f}" for r in results) + " | |")
    n = results[0]["n"]
    g = goals(n)
    for m in methods:
        cells = []
        for r in results:
            if m not in r["times"]:
                cells.append("-")
                continue
            tm = r["times"][m]
            cell = f"{tm / r['times']['fwd']:.2f} / {tm / r['times']['floor']:.2f}"
            if m in g:
                ref, limit = g[m]
                ratio = tm / r["times"][ref]
                if m.startswith("filter visualization"):
                    cell = f"{ratio:.2f} x prefix"
                elif ref == nfloors(n):
                    cell += f" ({ratio:.2f} x {n} floors)"
                if ratio > limit:
                    cell += " !"
            cells.append(cell)
        goal = ""
        if m in g:
            ref, limit = g[m]
            goal = f"<= {limit:g} x {'prefix fwd+bwd' if ref.startswith('filter') else ref}"
            if ref == nfloors(n):
                goal = f"<= {limit:g} x {n} floors in a row ({limit * n:g} x floor)"
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {goal} |")
    mem = [r for r in results if r["memory"]]
    if mem:
        lines.append("")
        lines.append("Memory during 500 filter-visualization steps (MB; resident on CPU, peak allocated on GPU): "
                     + "; ".join(f"{r['model']} {r['device']}: step 10 {r['memory'][10]:.0f}, step 500 "
                                 f"{r['memory'][500]:.0f}" for r in mem) + ".")
    return "\n".join(lines)


def header(device: str = "cpu") -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    where = (f"GPU {torch.cuda.get_device_name(0)} (TF32 as torch's defaults leave it), host CPU {cpu}"
             if device == "cuda" else f"{torch.get_num_threads()} CPU threads ({cpu})")
    return (f"Measured {datetime.date.today().isoformat()} with torch {torch.__version__}, {where}. "
            f"Cells: time as a multiple of one forward pass / of the floor (one forward + one "
            f"input-gradient backward); `!` marks a goal missed.")


def batching(results: list) -> str:
    """On a GPU: how much faster n path points or noisy copies in one batch are than n passes of one."""
    lines = []
    for r in results:
        for method in ("integrated_gradients", "smoothgrad"):
            n = r["n"]
            one, batched = r["times"].get(f"{method} (n={n}, batch_size=1)"), r["times"][f"{method} (n={n})"]
            if one:
                lines.append(f"{r['model']} b{r['batch']}: {method} {one / batched:.1f} x")
    if not lines:
        return ""
    return ("Batching on the GPU: n = " + str(results[0]["n"]) + " path points or noisy copies in one "
            "batch against n passes of one (`batch_size=1`), time of the n passes / time batched: "
            + "; ".join(lines) + ".")


BLOCKS = {"cpu": ("<!-- benchmark:start -->", "<!-- benchmark:end -->"),
          "cuda": ("<!-- benchmark-gpu:start -->", "<!-- benchmark-gpu:end -->")}


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="ShapesNet only")
    p.add_argument("--models", nargs="*", default=None)
    p.add_argument("--batches", nargs="*", type=int, default=[1, 8])
    p.add_argument("--devices", nargs="*", choices=["cpu", "cuda"], default=None,
                   help="default: the CPU, and the GPU where there is one")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--n", type=int, default=8, help="IG steps and SmoothGrad samples")
    p.add_argument("--budget", type=float, default=20.0,
                   help="seconds of rounds per group of methods, at most (a round is always completed)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (the README's table: 2)")
    p.add_argument("--score-cam", action="store_true",
                   help="also Score-CAM on VGG16/ResNet50 (512/2048 masked forward passes: slow)")
    p.add_argument("--readme", action="store_true",
                   help="rewrite the tables in README.md (the CPU's and the GPU's: each one measured)")
    p.add_argument("--out", type=Path, default=None,
                   help="file for the tables (default: RESULTS.md beside this script, written only by a "
                        "run of every model; --quick and --models write none unless given --out)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.models or (["shapesnet"] if args.quick else ["shapesnet", "vgg16", "resnet50"])
    kinds = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    if "cuda" in kinds and not torch.cuda.is_available():
        raise SystemExit("--devices cuda: torch sees no GPU here")
    texts = {}
    for kind in kinds:
        device, results = torch.device(kind), []
        for name in names:
            for batch in args.batches:
                started = time.perf_counter()
                r = measure(name, batch, device, args.rounds, args.n,
                            score_cam=args.score_cam or name == "shapesnet", budget=args.budget)
                results.append(r)
                print(f"{name} batch {batch} {kind}: {time.perf_counter() - started:.0f} s", flush=True)
        extra = batching(results)
        texts[kind] = header(kind) + "\n\n" + table(results) + "\n" + (f"\n{extra}\n" if extra else "")
    text = "\n".join(texts.values())
    print(text)
    out = args.out or (None if args.quick or args.models else Path(__file__).with_name("RESULTS.md"))
    if out is not None:
        out.write_text("# Benchmark results\n\n" + text)
    if args.readme:
        readme = ROOT / "README.md"
        s = readme.read_text()
        for kind, block in texts.items():
            start, end = BLOCKS[kind]
            if start not in s:
                raise SystemExit(f"README.md has no {start} marker")
            s = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _m: start + "\n" + block + end, s, flags=re.S)
        readme.write_text(s)
    return text


if __name__ == "__main__":
    main()
