"""``mrl compare``: the MRL paper's comparison reproduced by one command.

MRL paper, section 4.1 (Figure 2; Tables 1 and 2): at every size m, MRL (one model, every prefix)
against FF (a separate model per m, trained with the same recipe), post-hoc compressions of FF-d
(SVD and random feature selection, each with a linear probe), a slimmable network, MRL retro-fitted
onto a frozen FF-d model, and MRL-E; linear top-1 and 1-NN on the test set, over several seeds.

Layout of OUT (every piece is reused when present, so an interrupted compare resumes):

    OUT/runs/seed-S/mrl, mrl-e, ff-M, slim    training runs (mrl.training layout; resumable per epoch)
    OUT/runs/seed-S/svd, rand, retrofit       derived results on ff-D (written atomically, whole)
    OUT/table_top1.csv, OUT/table_knn1.csv     rows = sizes; per method its mean and std over seeds
    OUT/results.json                           every seed's numbers and the training wall times
    OUT/report.md, OUT/top1.png, OUT/knn1.png

Accuracies in the CSV and JSON files are shares in [0, 1]; report.md shows percent. The std is the
sample standard deviation over seeds (0 for one seed). Random feature selection first averages
its draws within a seed.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mrl.baselines import LinearProbe, RandomFeatures, SVDProjection, draw_seed
from mrl.baselines.retrofit import is_done as retrofit_done
from mrl.baselines.retrofit import load_result as retrofit_result
from mrl.baselines.retrofit import retrofit
from mrl.baselines.slimmable import evaluate_slimmable, slimmable_config, train_slimmable
from mrl.config import TrainConfig
from mrl.data import Dataset, load_dataset
from mrl.errors import MRLError
from mrl.artifacts import read_manifest, write_manifest
from mrl.evaluation import embed, knn1_accuracy, load_run, per_size
from mrl.experiments import check_folder, claim_folder, run_or_reuse, run_status
from mrl.io import atomic_directory, atomic_write_text, read_json, read_jsonl, write_json
from mrl.nesting import parse_nesting
from mrl.report import markdown_table, plot_vs_size
from mrl.runs import EVAL_FILE, METRICS_FILE, check_eval, read_eval, read_state

METHODS = ("mrl", "mrl-e", "ff", "svd", "rand", "slim", "retrofit")
LABELS = {
    "mrl": "MRL", "mrl-e": "MRL-E", "ff": "FF", "svd": "SVD", "rand": "Rand. FS", "slim": "Slimmable",
    "retrofit": "MRL retro-fit",
}


def parse_methods(text: str | Sequence[str] | None) -> list[str]:
    """Method ids in the canonical order; ``None`` means all.

    Example:
        >>> parse_methods("ff,mrl")
        ['mrl', 'ff']
    """
    if text is None:
        return list(METHODS)
    names = [n.strip().lower() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise MRLError(f"unknown method(s) {unknown or names!r} in --methods; choose from {', '.join(METHODS)}")
    return [m for m in METHODS if m in names]


def _derived(path: Path, key: dict, build: Callable[[], dict]) -> dict:
    """Reuse path/eval.json if it was made with the same ``key``; else build it atomically."""
    if path.exists():
        saved = read_manifest(path, "experiment").meta.get("key")
        if not isinstance(saved, dict):
            raise MRLError(f"{path}/manifest.json records no settings for its result (meta.key is {saved!r}); use another --out")
        if saved != key:
            changed = sorted(k for k in set(saved) | set(key) if saved.get(k) != key.get(k))
            raise MRLError(f"{path} holds a result with other settings ({', '.join(changed)}); use another --out")
        return check_eval(read_json(path / EVAL_FILE), path / EVAL_FILE)
    result = build()
    with atomic_directory(path) as tmp:
        write_json(tmp / EVAL_FILE, result)
        write_manifest(tmp, "experiment", [EVAL_FILE], meta={"key": key})
    return result


def _probe_sizes(train: np.ndarray, test: np.ndarray, y_train: np.ndarray, y_test: np.ndarray,
                 nesting: Sequence[int], standardize: bool = True) -> dict[str, float]:
    """Top-1 of a linear probe on the first m columns, for every m."""
    return {str(m): LinearProbe(standardize=standardize).fit(train[:, :m], y_train).score(test[:, :m], y_test)
            for m in nesting}


def svd_result(z_train: np.ndarray, z_test: np.ndarray, y_train: np.ndarray, y_test: np.ndarray,
               nesting: Sequence[int]) -> dict:
    """SVD baseline at every size: top-m principal directions of the train representations.

    The probe sees the (centred) projections as they are: scaling each principal component to unit
    variance would whiten the representation and amplify its low-variance directions, which on
    Fashion-MNIST (5,000 train examples, m = 2048) costs about 6 points of top-1.
    """
    k = min(max(nesting), *z_train.shape)
    sizes = [m for m in nesting if m <= k]
    proj = SVDProjection(k).fit(z_train)
    p_train, p_test = proj.transform(z_train), proj.transform(z_test)
    knn = knn1_accuracy(p_train, y_train, p_test, y_test, sizes)
    return {"top1": _probe_sizes(p_train, p_test, y_train, y_test, sizes, standardize=False), "knn1": {str(m): knn[m] for m in sizes},
            "explained_variance": {str(m): float(proj.explained_variance_ratio_[:m].sum()) for m in sizes},
            "nesting": sizes}


def rand_result(z_train: np.ndarray, z_test: np.ndarray, y_train: np.ndarray, y_test: np.ndarray,
                nesting: Sequence[int], seed: int, draws: int) -> dict:
    """Random feature selection at every size, ``draws`` seeded draws each (mean and the draws)."""
    top1 = {str(m): [] for m in nesting}
    knn1 = {str(m): [] for m in nesting}
    for draw in range(draws):
        for m in nesting:
            sel = RandomFeatures(m, seed=draw_seed(seed, draw, m)).fit(z_train)
            s_train, s_test = sel.transform(z_train), sel.transform(z_test)
            top1[str(m)].append(LinearProbe().fit(s_train, y_train).score(s_test, y_test))
            knn1[str(m)].append(knn1_accuracy(s_train, y_train, s_test, y_test, [m])[m])
    return {"top1": {m: float(np.mean(v)) for m, v in top1.items()}, "knn1": {m: float(np.mean(v)) for m, v in knn1.items()},
            "top1_draws": top1, "knn1_draws": knn1, "nesting": list(nesting)}


def probe_result(run_dir: Path, dataset: Dataset, sizes: Sequence[int]) -> dict:
    """Top-1 of a converged :class:`~mrl.baselines.LinearProbe` on z[:, :m] of a trained run, for each m
    in ``sizes`` up to its representation size (an FF-m run has one: its whole representation)."""
    config, model, _, device = load_run(run_dir, dataset)
    z_train, z_test = embed(model, dataset.train.x, device), embed(model, dataset.test.x, device)
    kept = [m for m in sizes if m <= config.rep_dim]
    top1 = _probe_sizes(z_train, z_test, dataset.train.y.numpy(), dataset.test.y.numpy(), kept)
    knn1 = read_eval(run_dir)["knn1"]  # the representation's own 1-NN: a probe does not change it
    return {"top1": top1, "knn1": {str(m): knn1[str(m)] for m in kept}, "nesting": kept}


def _train_seconds(run_dir: Path) -> float:
    return float(sum(r.get("seconds", 0.0) for r in read_jsonl(run_dir / METRICS_FILE)))


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def aggregate(per_seed: dict[str, list[dict[int, float]]]) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, float]]]:
    """Mean and sample std over seeds of each method's per-size series (sizes present in every seed).

    Example:
        >>> mean, std = aggregate({"MRL": [{8: 0.5}, {8: 0.7}]})
        >>> round(mean["MRL"][8], 3), round(std["MRL"][8], 4)
        (0.6, 0.1414)
    """
    means, stds = {}, {}
    for name, runs in per_seed.items():
        sizes = sorted(set.intersection(*(set(r) for r in runs))) if runs else []
        pairs = {m: _mean_std([r[m] for r in runs]) for m in sizes}
        means[name] = {m: p[0] for m, p in pairs.items()}
        stds[name] = {m: p[1] for m, p in pairs.items()}
    return means, stds


def table_csv(means: dict[str, dict[int, float]], stds: dict[str, dict[int, float]], sizes: Sequence[int]) -> str:
    """CSV text: column m, then <method>_mean and <method>_std per method (empty where missing)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["m", *[f"{name}_{part}" for name in means for part in ("mean", "std")]])
    for m in sizes:
        row: list[str | int] = [m]
        for name in means:
            row += [f"{means[name][m]:.6f}", f"{stds[name][m]:.6f}"] if m in means[name] else ["", ""]
        writer.writerow(row)
    return buf.getvalue()


def compare(
    out: str | Path, data: str = "fashion-mnist", data_dir: str | None = None, methods: str | Sequence[str] | None = None,
    nesting: str | Sequence[int] | None = None, epochs: int = 5, seeds: int = 3, arch: str | None = None,
    rep_dim: int = 2048, max_train: int | None = None, batch_size: int = 256, lr: float = 2e-3, rand_draws: int = 3,
    rep_activation: str = "none", progress: bool = True, echo: Callable[[str], None] = print, on_run_done: Callable[[str], None] | None = None,
    dataset: Dataset | None = None,
) -> dict:
    """Train or reuse every run the comparison needs under ``out``, aggregate over seeds, write the report.

    ``on_run_done(name)`` is called after each run or derived result is ready (name like
    ``seed-0/ff-8``); tests use it to interrupt a compare. Returns {"top1": (means, stds),
    "knn1": (means, stds), "per_seed": ..., "train_seconds": ...}.
    """
    out = Path(out)
    methods = parse_methods(methods)
    sizes = parse_nesting(nesting, rep_dim)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise MRLError(f"seeds must be a positive integer, got {seeds!r}")
    if isinstance(rand_draws, bool) or not isinstance(rand_draws, int) or rand_draws < 1:
        raise MRLError(f"rand-draws must be a positive integer, got {rand_draws!r}")
    common = dict(data=data, data_dir=data_dir, arch=arch, epochs=epochs, max_train=max_train,
                  batch_size=batch_size, lr=lr, rep_activation=rep_activation)
    TrainConfig(rep_dim=rep_dim, nesting=sizes, **common)  # validate every setting before any work
    check_folder(out, "compare", inputs=[data, data_dir])  # before the data set loads
    dataset = dataset if dataset is not None else load_dataset(data, data_dir, max_train, streaming=False)
    with claim_folder(out, "compare", inputs=[data, data_dir]):
        y_train, y_test = dataset.train.y.numpy(), dataset.test.y.numpy()
        needs_ffd = any(m in methods for m in ("svd", "rand", "retrofit"))
        ff_sizes = sorted(set(sizes if "ff" in methods else []) | ({rep_dim} if needs_ffd else set()))
        per_seed: dict[str, list[dict]] = {m: [] for m in methods}
        per_seed_probe: dict[str, list[dict[int, float]]] = {}
        seconds: dict[str, list[float]] = {}
        started = time.time()

        def done(name: str) -> None:
            echo(f"   {name} ready ({time.time() - started:.0f} s)")
            if on_run_done is not None:
                on_run_done(name)

        for seed in range(seeds):
            base = out / "runs" / f"seed-{seed}"
            results: dict[str, dict] = {}
            for mode in ("mrl", "mrl-e"):
                if mode in methods:
                    config = TrainConfig(mode=mode, rep_dim=rep_dim, nesting=sizes, seed=seed, **common)
                    results[mode] = run_or_reuse(config, base / mode, data=dataset, progress=progress)
                    seconds.setdefault(mode, []).append(_train_seconds(base / mode))
                    done(f"seed-{seed}/{mode}")
            ff = {}
            for m in ff_sizes:
                config = TrainConfig(mode="ff", ff_dim=m, seed=seed, **common)
                ff[m] = run_or_reuse(config, base / f"ff-{m}", data=dataset, progress=progress)
                done(f"seed-{seed}/ff-{m}")
            if "ff" in methods:
                results["ff"] = {"top1": {str(m): ff[m]["top1"][str(m)] for m in sizes},
                                 "knn1": {str(m): ff[m]["knn1"][str(m)] for m in sizes}}
                seconds.setdefault("ff", []).append(sum(_train_seconds(base / f"ff-{m}") for m in sizes))
            if "slim" in methods:
                config = slimmable_config(rep_dim=rep_dim, nesting=sizes, seed=seed, **common)
                run = base / "slim"
                status = run_status(run, config)
                if status in ("new", "partial"):
                    train_slimmable(config, run, resume=status == "partial", progress=progress, data=dataset)
                    status = "trained"
                results["slim"] = evaluate_slimmable(run, data=dataset) if status == "trained" else read_eval(run)
                seconds.setdefault("slim", []).append(_train_seconds(run))
                done(f"seed-{seed}/slim")
            if needs_ffd:
                ffd_run = base / f"ff-{rep_dim}"
                ffd_sha = read_state(ffd_run).model_sha256
                features: dict[str, np.ndarray] = {}

                def ffd_features() -> tuple[np.ndarray, np.ndarray]:
                    if not features:
                        _, model, _, device = load_run(ffd_run, dataset)
                        features["train"] = embed(model, dataset.train.x, device)
                        features["test"] = embed(model, dataset.test.x, device)
                    return features["train"], features["test"]

                if "svd" in methods:
                    key = {"method": "svd", "base_model_sha256": ffd_sha, "nesting": sizes, "probe": "centred"}
                    results["svd"] = _derived(base / "svd", key, lambda: svd_result(*ffd_features(), y_train, y_test, sizes))
                    done(f"seed-{seed}/svd")
                if "rand" in methods:
                    key = {"method": "rand", "base_model_sha256": ffd_sha, "nesting": sizes, "draws": rand_draws, "seed": seed}
                    results["rand"] = _derived(
                        base / "rand", key, lambda: rand_result(*ffd_features(), y_train, y_test, sizes, seed, rand_draws))
                    done(f"seed-{seed}/rand")
                if "retrofit" in methods:
                    path = base / "retrofit"
                    if retrofit_done(path):
                        saved, results["retrofit"] = retrofit_result(path)
                        if saved.extra.get("base_model_sha256") != ffd_sha or saved.nesting != sizes or saved.epochs != epochs:
                            raise MRLError(f"{path} holds a retro-fit with other settings; use another --out")
                    elif path.exists():
                        raise MRLError(f"{path} exists but holds no finished retro-fit; move it away")
                    else:
                        results["retrofit"] = retrofit(ffd_run, path, nesting=sizes, epochs=epochs, seed=seed,
                                                                    data=dataset, progress=progress)
                    seconds.setdefault("retrofit", []).append(float(results["retrofit"].get("train_seconds", 0.0)))
                    done(f"seed-{seed}/retrofit")
            for method in methods:
                per_seed[method].append({key: per_size(results[method], key) for key in ("top1", "knn1")})
            # the same converged probe on every learned representation (SVD and Rand. FS have it already)
            probes: dict[str, dict[int, float]] = {}
            for mode in ("mrl", "mrl-e"):
                if mode in methods:
                    key = {"method": "probe", "base_model_sha256": read_state(base / mode).model_sha256, "nesting": sizes}
                    probes[mode] = per_size(_derived(base / f"probe-{mode}", key,
                                                     lambda mode=mode: probe_result(base / mode, dataset, sizes)), "top1")
            if "ff" in methods:
                probes["ff"] = {}
                for m in sizes:
                    run = base / f"ff-{m}"
                    key = {"method": "probe", "base_model_sha256": read_state(run).model_sha256, "nesting": [m]}
                    probes["ff"].update(per_size(_derived(base / f"probe-ff-{m}", key,
                                                          lambda run=run, m=m: probe_result(run, dataset, [m])), "top1"))
            for method in ("svd", "rand"):
                if method in methods:
                    probes[method] = per_size(results[method], "top1")
            for method, series in probes.items():
                per_seed_probe.setdefault(method, []).append(series)

        return write_report(out, per_seed, per_seed_probe, seconds, sizes, dict(
            data=data, arch=arch or ("resnet" if dataset.kind == "image" else "mlp"), rep_dim=rep_dim, epochs=epochs,
            seeds=seeds, max_train=max_train, n_train=len(dataset.train), n_test=len(dataset.test), rand_draws=rand_draws,
            batch_size=batch_size, lr=lr, rep_activation=rep_activation), echo)


def protocols_table(heads: tuple[dict, dict], probe: tuple[dict, dict], sizes: Sequence[int]) -> str:
    """Markdown table with each method's own-heads top-1 beside its converged-probe top-1."""
    columns, stds = {}, {}
    for name in dict.fromkeys([*heads[0], *probe[0]]):
        for part, (means, spread) in (("heads", heads), ("probe", probe)):
            own_heads = name not in ("SVD", "Rand. FS")  # these two have only the probe
            if name in means and (part == "probe" or own_heads):
                columns[f"{name} {part}"], stds[f"{name} {part}"] = means[name], spread[name]
    return markdown_table(columns, sizes, stds)


def write_report(out: Path, per_seed: dict[str, list[dict]], per_seed_probe: dict[str, list[dict[int, float]]],
                 seconds: dict[str, list[float]], sizes: list[int], setting: dict,
                 echo: Callable[[str], None] = print) -> dict:
    """Aggregate, then write the CSV tables, results.json, the plots and report.md; print a summary."""
    tables = {}
    for key, title in (("top1", "linear top-1"), ("knn1", "1-NN")):
        means, stds = aggregate({LABELS[m]: [r[key] for r in runs] for m, runs in per_seed.items()})
        tables[key] = (means, stds)
        atomic_write_text(out / f"table_{key}.csv", table_csv(means, stds, sizes))
        plot_vs_size(out / f"{key}.png", means, f"test {title} accuracy (%)",
                     f"{setting['data']}: {title} vs size ({setting['seeds']} seed(s))", stds=stds,
                     points=[LABELS["ff"]])
    probe = aggregate({LABELS[m]: runs for m, runs in per_seed_probe.items()})
    atomic_write_text(out / "table_top1_probe.csv", table_csv(*probe, sizes))
    both = protocols_table(tables["top1"], probe, sizes)
    cost = {LABELS[m]: _mean_std(v) for m, v in seconds.items()}
    ratio = None
    if "FF" in cost and "MRL" in cost and cost["MRL"][0] > 0:
        ratio = cost["FF"][0] / cost["MRL"][0]
    write_json(out / "results.json", {
        "setting": setting, "sizes": sizes,
        "per_seed": {LABELS[m]: [{k: {str(s): v for s, v in r[k].items()} for k in r} for r in runs]
                     for m, runs in per_seed.items()},
        "per_seed_probe": {LABELS[m]: [{str(s): v for s, v in r.items()} for r in runs] for m, runs in per_seed_probe.items()},
        "train_seconds": {LABELS[m]: v for m, v in seconds.items()},
        "ff_to_mrl_train_time_ratio": ratio,
    })
    t1 = markdown_table(tables["top1"][0], sizes, tables["top1"][1])
    t2 = markdown_table(tables["knn1"][0], sizes, tables["knn1"][1])
    cost_lines = [f"| {name} | {m:.1f} ± {s:.1f} |" for name, (m, s) in cost.items()]
    described = (f"Data `{setting['data']}` ({setting['n_train']} train / {setting['n_test']} test examples), backbone "
                 f"`{setting['arch']}`, d = {setting['rep_dim']}, {setting['epochs']} epoch(s) per run, batch "
                 f"{setting['batch_size']}, lr {setting['lr']}, representation activation `{setting['rep_activation']}`, seeds 0..{setting['seeds'] - 1}; random features: "
                 f"{setting['rand_draws']} draw(s) per size and seed.")
    report = "\n".join([
        f"# MRL comparison: {setting['data']}", "", described,
        "Test-set accuracy in %, mean ± sample std over seeds. FF is a separate model per size; SVD, Rand. FS",
        "and the retro-fit start from each seed's FF-d model; MRL, MRL-E and Slimmable are one model per seed.", "",
        "## Linear classification, top-1 (%)", "",
        "The paper's protocol (section 4.1, Figure 2): MRL, MRL-E, FF, Slimmable and the retro-fit are scored",
        "with the heads trained with them (here after the epochs above), SVD and Rand. FS with a linear",
        "classifier fitted to convergence on their features. The two kinds of classifier differ, so this",
        "table alone compares representations and classifiers at once; the next one separates them.", "",
        t1, "", "![top-1 vs size](top1.png)", "",
        "## Both protocols side by side, top-1 (%)", "",
        "`heads`: each method's own heads (the table above). `probe`: the same multinomial logistic",
        "regression, fitted to convergence (L-BFGS, deterministic), on every representation: z[:m] of",
        "MRL and MRL-E, each FF-m model's representation, and the SVD and Rand. FS features.", "",
        both, "",
        "## 1-NN accuracy (%) (database: train set, cosine)", "", t2, "", "![1-NN vs size](knn1.png)", "",
        "## Training wall time per seed (s; epochs incl. per-epoch validation)", "",
        "| method | seconds |", "|---|---:|", *cost_lines, "",
        *([f"Training every FF size took {ratio:.2f}x the wall time of one MRL run "
           f"(|M| = {len(sizes)} sizes)."] if ratio else []), "",
    ])
    atomic_write_text(out / "report.md", report)
    echo("\nLinear top-1 (%):\n" + t1 + "\n\nOwn heads vs converged probe, top-1 (%):\n" + both
         + "\n\n1-NN (%):\n" + t2
         + (f"\n\nFF (all sizes) / MRL training wall time: {ratio:.2f}x" if ratio else "")
         + f"\n\nReport: {out / 'report.md'}")
    return {"top1": tables["top1"], "knn1": tables["knn1"], "top1_probe": probe, "per_seed": per_seed,
            "per_seed_probe": per_seed_probe, "train_seconds": seconds,
            "ff_to_mrl_train_time_ratio": ratio}
