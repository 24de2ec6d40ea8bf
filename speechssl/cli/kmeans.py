"""`speechssl kmeans fit|label|import`: k-means on dumped features, one unit per frame, or a
released k-means model (fairseq / HuBERT `km.bin`) read without running code from it."""

from __future__ import annotations

import argparse

from speechssl.cli.common import add_overwrite_argument, check_device
from speechssl.features.dump import FeatureReader
from speechssl.outputs import claim_directories
from speechssl.units.kmeans import FitPlan, KMeansConfig, KMeansModel, fit_kmeans, is_kmeans_output, label
from speechssl.units.kmeans_import import import_kmeans, read_sklearn_kmeans


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "kmeans",
        help="fit k-means on dumped features, or label every frame with its unit",
        description="MiniBatchKMeans with fairseq's HuBERT settings; centroids stored as .npy (no pickle).",
    )
    actions = parser.add_subparsers(dest="action", metavar="<action>", required=True)
    defaults = KMeansConfig(num_clusters=2)

    fit = actions.add_parser("fit", help="fit centroids: KM/centroids.npy + KM/kmeans.json")
    fit.add_argument("--feats", required=True, help="feature dir written by `speechssl features`")
    fit.add_argument(
        "--num-clusters", type=int, required=True, help="K (HuBERT: 100 on MFCC, 500 on layer 6)"
    )
    fit.add_argument("--out", required=True, help="k-means model dir")
    add_overwrite_argument(fit)
    fit.add_argument(
        "--percent",
        type=float,
        default=defaults.percent,
        help="fraction of the utterances of each shard to fit on, in (0, 1] (default: all)",
    )
    fit.add_argument("--seed", type=int, default=defaults.seed)
    fit.add_argument("--n-init", type=int, default=defaults.n_init, help=f"default {defaults.n_init}")
    fit.add_argument("--max-iter", type=int, default=defaults.max_iter, help=f"default {defaults.max_iter}")
    fit.add_argument(
        "--batch-size", type=int, default=defaults.batch_size, help=f"default {defaults.batch_size}"
    )
    fit.add_argument(
        "--backend",
        default=defaults.backend,
        help="sklearn (MiniBatchKMeans, fairseq's settings; default) or faiss (Lloyd k-means, "
        "faiss-cpu, on a GPU when faiss sees one)",
    )
    fit.add_argument(
        "--max-memory",
        type=float,
        default=None,
        metavar="GB",
        help="cap on the fit's memory: above it sklearn streams mini-batches from the shards and "
        "faiss fits a random sample that fits (default: no cap, all selected frames in memory)",
    )
    fit.add_argument(
        "--stream-passes",
        type=int,
        default=defaults.stream_passes,
        help=f"passes over the frames when the sklearn fit streams (default {defaults.stream_passes})",
    )
    fit.set_defaults(func=run_fit)

    lab = actions.add_parser("label", help="write OUT/labels (uttid u1 u2 ...) and OUT/dict.txt")
    lab.add_argument("--feats", required=True, help="feature dir written by `speechssl features`")
    lab.add_argument("--model", required=True, help="k-means model dir from `speechssl kmeans fit`")
    lab.add_argument("--out", required=True, help="output dir for labels and dict.txt (written as one pair)")
    add_overwrite_argument(lab)
    lab.add_argument("--device", default="cpu", help="torch device for the distance matmul (default cpu)")
    lab.set_defaults(func=run_label)

    imp = actions.add_parser(
        "import",
        help="a released scikit-learn k-means (fairseq/HuBERT km.bin) -> KM/centroids.npy + KM/kmeans.json",
        description="Read a joblib/pickle file of scikit-learn's MiniBatchKMeans or KMeans (fairseq's "
        "learn_kmeans.py output) with a restricted unpickler: only cluster_centers_ is kept, and a file "
        "naming any other class or function is refused without running it.",
    )
    imp.add_argument("--model", required=True, help="km.bin (joblib or pickle of a fitted k-means)")
    imp.add_argument("--out", required=True, help="k-means model dir, as `speechssl kmeans fit` writes")
    add_overwrite_argument(imp)
    imp.set_defaults(func=run_import)


def _claim(out: str, command: str, overwrite: bool, inputs: tuple, labels: bool) -> None:
    claim_directories(
        [out], command, overwrite=overwrite, inputs=inputs,
        earlier_output=lambda p: is_kmeans_output(p, labels=labels),
    )  # fmt: skip


def run_fit(args: argparse.Namespace) -> int:
    options = {
        "n_init": args.n_init,
        "max_iter": args.max_iter,
        "batch_size": args.batch_size,
        "backend": args.backend,
        "max_memory_gb": args.max_memory,
        "stream_passes": args.stream_passes,
    }
    # a bad option (--backend, --max-memory) is named before anything is read or claimed
    KMeansConfig(num_clusters=args.num_clusters, percent=args.percent, seed=args.seed, **options)
    reader = FeatureReader(args.feats)  # a damaged shard is named before the output dir is touched

    def claim(plan: FitPlan) -> None:  # after every check of the fit, before any frame is read
        print(f"kmeans: {plan.describe()}", flush=True)
        _claim(args.out, "kmeans fit", args.overwrite, (args.feats,), labels=False)

    model = fit_kmeans(
        reader,
        args.num_clusters,
        percent=args.percent,
        seed=args.seed,
        out_dir=args.out,
        on_plan=claim,
        **options,
    )
    print(
        f"kmeans: {model.num_clusters} centroids in {args.out} ({model.params['backend']}, "
        f"{model.params['fit_mode']}; inertia per frame {model.params['inertia_per_frame']:.4f})"
    )
    return 0


def run_label(args: argparse.Namespace) -> int:
    check_device(args.device)  # one line, before anything is read or claimed
    reader, model = FeatureReader(args.feats), KMeansModel.load(args.model)
    model.check_features(reader)
    _claim(args.out, "kmeans label", args.overwrite, (args.feats, args.model), labels=True)
    labels = label(reader, model, args.out, device=args.device)
    print(f"kmeans: labelled {len(labels)} utterances into {args.out}/labels")
    return 0


def run_import(args: argparse.Namespace) -> int:
    read_sklearn_kmeans(args.model)  # a refused or damaged file is named before the output dir is touched
    _claim(args.out, "kmeans import", args.overwrite, (args.model,), labels=False)
    model = import_kmeans(args.model, args.out)
    print(
        f"kmeans: imported {model.num_clusters} centroids of dim {model.centroids.shape[1]} from "
        f"{args.model} ({model.params['sklearn_class']}) into {args.out}"
    )
    return 0
