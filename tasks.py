"""Luigi tasks of colorize-fcn: one task per stage, the work lives in pipeline/,
models/ and train/.

    luigi --module tasks TrainFCN16s --config 14 --dataset /data/photos

Every output path carries a signature of everything that made it (stage code
version, output-affecting parameters, upstream signatures, source file
fingerprints; see pipeline/signature.py), so a rerun runs exactly the stale
stages, and label shards are shared by every experiment with the same label
settings.  Machine settings come from luigi.cfg's [colorize] section.
"""
import json
import logging
from collections import Counter
from functools import cached_property
from pathlib import Path

import luigi
from luigi.parameter import ParameterVisibility

from pipeline import luigi_summary  # noqa: F401  (exit codes under a central scheduler)
from pipeline.atomic import remove_stale_temporaries, write_text_atomic
from pipeline.config import resolve_config
from pipeline.datasets import list_split, materialise_samples
from pipeline.gmm import fit_gmm, load_gmm, save_gmm, uniform_grid
from pipeline.plan import dataset_id, plan_shards
from pipeline.preprocess import build_label_shard, build_lab_shard, gmm_features, mean_lightness
from pipeline.progress import Progress
from pipeline.shards import COMPRESSION, read_attrs
from pipeline.signature import hash_strings, signature

log = logging.getLogger("luigi-interface")


class colorize(luigi.Config):
    """Machine settings: [colorize] in luigi.cfg."""
    work_dir = luigi.Parameter(default="work", description="root of every output")
    dataset = luigi.Parameter(default="data/samples", description="default dataset root")
    device = luigi.Parameter(default="auto", description="auto | cpu | cuda | cuda:N")
    loader_workers = luigi.IntParameter(default=2, description="DataLoader worker processes")
    lab_compression = luigi.ChoiceParameter(
        default="none", choices=sorted(k for k in COMPRESSION if k),
        description="Lab shard storage: a disk-vs-CPU choice that does not change what is read back")
    gpu_resource = luigi.Parameter(default="gpu", description="[resources] name a training task takes 1 of "
                                   "(per-host names, e.g. gpu_host1, with a central scheduler)")


def work_dir() -> Path:
    return Path(colorize().work_dir)


@luigi.Task.event_handler(luigi.Event.START)
def _remove_stale_temporaries(task):
    """Before any task writes, clear temporaries that killed writers left beside its outputs."""
    for target in luigi.task.flatten(task.output()):
        if isinstance(target, luigi.LocalTarget):
            remove_stale_temporaries(Path(target.path).parent)


class _ProgressMixin:
    def _progress_callback(self, desc):
        bar = Progress(None, desc)     # started now, so the first rate is right

        def on_item(i, n):
            bar.update(1, total=n)
            if i == n or i % max(1, n // 20) == 0:
                self.set_progress_percentage(round(100 * i / max(n, 1)))
                self.set_status_message(f"{desc}: {i}/{n}")
        return on_item


class _ManifestTask(luigi.Task):
    """A task whose output lists its shards: complete only while every shard
    still exists, so deleting one shard reruns just that shard (Luigi would
    otherwise stop at the manifest and never look below it)."""

    def complete(self):
        return super().complete() and all(t.complete() for t in luigi.task.flatten(self.requires())
                                          if isinstance(t, (LabShard, LabelShard)))


# ---------------------------------------------------------------- Lab shards
class LabParams(luigi.Task):
    dataset = luigi.Parameter(default="", description="dataset root ('' = [colorize] dataset)")
    im_size = luigi.IntParameter(default=256, description="network input side, pixels")

    def root(self) -> Path:
        return Path(self.dataset or colorize().dataset).resolve()

    def lab_dir(self) -> Path:
        return work_dir() / "lab" / dataset_id(self.root()) / f"s{self.im_size}"


class LabShard(LabParams, _ProgressMixin):
    """Reads the shard's source images; writes lab/<dataset>/s<size>/<sig>.h5
    (L, ab, paths, sizes, fingerprints; skipped files with reasons in attrs)."""
    shard = luigi.Parameter(description="signature of the shard's files (from the split plan)")
    files = luigi.ListParameter(significant=False, visibility=ParameterVisibility.PRIVATE)

    def output(self):
        return luigi.LocalTarget(self.lab_dir() / f"{self.shard}.h5")

    def run(self):
        build_lab_shard(self.root(), list(self.files), self.im_size, self.output().path,
                        sig=self.shard, on_image=self._progress_callback(f"lab {self.shard}"),
                        compression=colorize().lab_compression)


class LabSplit(LabParams, _ManifestTask):
    """Reads a split list and that split's Lab shards; writes
    lab/<dataset>/s<size>/<split>-<sig>.json: the manifest with image and skip counts."""
    split = luigi.Parameter(default="train")
    shard_size = luigi.IntParameter(default=256, description="expected images per shard")

    @cached_property
    def plans(self):
        return plan_shards(self.root(), list_split(self.root(), self.split), self.shard_size, self.im_size)

    def shard_tasks(self):
        return [LabShard(dataset=self.dataset, im_size=self.im_size, shard=p.sig, files=p.files)
                for p in self.plans]

    def sig(self) -> str:
        return hash_strings([p.sig for p in self.plans])

    def requires(self):
        return self.shard_tasks()

    def output(self):
        return luigi.LocalTarget(self.lab_dir() / f"{self.split}-{self.sig()}.json")

    def run(self):
        manifest = summarise_split(self.root(), self.split, [t.path for t in self.input()])
        write_text_atomic(self.output().path, json.dumps(manifest, indent=1))
        reasons = ", ".join(f"{k} {v}" for k, v in manifest["skip_reasons"].items()) or "none"
        log.info("[lab] %s/%s: %d images in %d shards, %d skipped (%s)", self.root().name, self.split,
                 manifest["n_images"], len(manifest["shards"]), manifest["n_skipped"], reasons)


def summarise_split(root, split, shard_paths) -> dict:
    shards, skipped = [], []
    for path in shard_paths:
        attrs = read_attrs(path)
        shards.append({"file": Path(path).name, "n_images": attrs["n_images"]})
        skipped += attrs["skipped"]
    return {"dataset": str(root), "split": split, "shards": shards,
            "n_images": sum(s["n_images"] for s in shards), "n_skipped": len(skipped),
            "skip_reasons": dict(Counter(s[1] for s in skipped)), "skipped": skipped}


# ---------------------------------------------------------------- statistics and GMM
class MeanLightness(LabParams):
    """Reads sampled pixels of the split's Lab shards; writes
    stats/<dataset>/s<size>/mean-L-<sig>.json ({"mean_L": ...})."""
    split = luigi.Parameter(default="train")
    shard_size = luigi.IntParameter(default=256)
    mean_pixels = luigi.IntParameter(default=100_000)

    def requires(self):
        return LabSplit(dataset=self.dataset, im_size=self.im_size, split=self.split, shard_size=self.shard_size)

    def sig(self):
        return signature("mean", lab=self.requires().sig(), pixels=self.mean_pixels)

    def output(self):
        return luigi.LocalTarget(work_dir() / "stats" / dataset_id(self.root()) / f"s{self.im_size}"
                                 / f"mean-L-{self.sig()}.json")

    def run(self):
        paths = [t.output().path for t in self.requires().shard_tasks()]
        write_text_atomic(self.output().path, json.dumps({"mean_L": mean_lightness(paths, self.mean_pixels)}))


class GMMParams(LabParams):
    binning = luigi.ChoiceParameter(choices=["soft", "uniform"], default="soft")
    n_clusters = luigi.IntParameter(default=16, description="K")
    gmm_split = luigi.Parameter(default="train")
    shard_size = luigi.IntParameter(default=256)
    gmm_images = luigi.IntParameter(default=5000)
    gmm_pixels = luigi.IntParameter(default=20)
    gmm_pixels_few = luigi.IntParameter(default=1000)
    gmm_seed = luigi.IntParameter(default=0)

    def gmm_task(self):
        return FitGMM(**{k: getattr(self, k) for k in FitGMM.get_param_names()})


class FitGMM(GMMParams):
    """Reads pixels sampled from the train split's Lab shards (soft binning only);
    writes gmm/<dataset>/s<size>/<binning>-k<K>-<sig>.npz (plain arrays, no pickle)."""

    def lab_split(self):
        return LabSplit(dataset=self.dataset, im_size=self.im_size, split=self.gmm_split,
                        shard_size=self.shard_size)

    def requires(self):
        return self.lab_split() if self.binning == "soft" else []

    def sig(self):
        if self.binning == "uniform":   # a fixed grid: independent of the data
            return signature("gmm", binning="uniform", k=self.n_clusters)
        return signature("gmm", binning="soft", k=self.n_clusters, lab=self.lab_split().sig(),
                         images=self.gmm_images, pixels=self.gmm_pixels,
                         pixels_few=self.gmm_pixels_few, seed=self.gmm_seed)

    def output(self):
        return luigi.LocalTarget(work_dir() / "gmm" / dataset_id(self.root()) / f"s{self.im_size}"
                                 / f"{self.binning}-k{self.n_clusters}-{self.sig()}.npz")

    def run(self):
        if self.binning == "uniform":
            gmm = uniform_grid(self.n_clusters)
        else:
            paths = [t.output().path for t in self.lab_split().shard_tasks()]
            features = gmm_features(paths, self.gmm_images, self.gmm_pixels, self.gmm_pixels_few, self.gmm_seed)
            self.set_status_message(f"fitting {self.n_clusters} components on {len(features)} pixels")
            gmm = fit_gmm(features, self.n_clusters, self.gmm_seed)
        save_gmm(self.output().path, gmm, signature=self.sig())


# ---------------------------------------------------------------- label shards
class LabelParams(GMMParams):
    img_lowpass = luigi.IntParameter(default=8, description="f: blur sigma and downscale factor")

    def label_dir(self) -> Path:
        gmm = self.gmm_task()
        return (work_dir() / "labels" / dataset_id(self.root()) / f"s{self.im_size}"
                / f"{self.binning}-k{self.n_clusters}-lp{self.img_lowpass}-g{gmm.sig()}")


class LabelShard(LabelParams, _ProgressMixin):
    """Reads one Lab shard and the GMM; writes labels/<dataset>/s<size>/<binning>-k<K>-lp<f>-g<gmm>/<sig>.h5
    (posteriors (N, K, S/f, S/f) float16, aligned 1:1 with the Lab shard)."""
    shard = luigi.Parameter()
    files = luigi.ListParameter(significant=False, visibility=ParameterVisibility.PRIVATE)

    def requires(self):
        return {"lab": LabShard(dataset=self.dataset, im_size=self.im_size, shard=self.shard, files=self.files),
                "gmm": self.gmm_task()}

    def output(self):
        sig = signature("labels", lab=self.shard, gmm=self.gmm_task().sig(), lowpass=self.img_lowpass)
        return luigi.LocalTarget(self.label_dir() / f"{sig}.h5")

    def run(self):
        gmm = load_gmm(self.input()["gmm"].path)
        build_label_shard(self.input()["lab"].path, gmm, self.img_lowpass, self.output().path,
                          sig=Path(self.output().path).stem,
                          on_image=self._progress_callback(f"labels {self.shard}"))


class LabelSplit(LabelParams, _ManifestTask):
    """Reads a split's Lab manifest and label shards; writes
    labels/.../<split>-<sig>.json listing the (Lab shard, label shard) pairs."""
    split = luigi.Parameter(default="train")

    def lab_split(self):
        return LabSplit(dataset=self.dataset, im_size=self.im_size, split=self.split, shard_size=self.shard_size)

    def shard_tasks(self):
        keys = [k for k in LabelShard.get_param_names() if k not in ("shard", "files")]
        common = {k: getattr(self, k) for k in keys}
        return [LabelShard(shard=p.sig, files=p.files, **common) for p in self.lab_split().plans]

    def pairs(self):
        """[(lab shard path, label shard path)] of the split, in plan order."""
        return [(t.requires()["lab"].output().path, t.output().path) for t in self.shard_tasks()]

    def sig(self):
        return hash_strings([Path(t.output().path).stem for t in self.shard_tasks()])

    def requires(self):
        return {"lab": self.lab_split(), "labels": self.shard_tasks()}

    def output(self):
        return luigi.LocalTarget(self.label_dir() / f"{self.split}-{self.sig()}.json")

    def run(self):
        pairs = [{"lab": Path(a).name, "labels": Path(b).name} for a, b in self.pairs()]
        lab = json.loads(Path(self.input()["lab"].path).read_text())
        write_text_atomic(self.output().path, json.dumps(
            {"split": self.split, "n_images": lab["n_images"], "n_skipped": lab["n_skipped"],
             "pairs": pairs}, indent=1))


# ---------------------------------------------------------------- tasks from a config
def label_params(cfg: dict, dataset: str, split: str) -> dict:
    """LabelSplit parameters for a resolved config: the only things the labels depend on."""
    return dict(dataset=dataset, split=split, im_size=cfg["im_size"], shard_size=cfg["shard_size"],
                binning=cfg["binning"], n_clusters=cfg["n_clusters"], img_lowpass=cfg["img_lowpass"],
                gmm_split=cfg["train_split"], gmm_images=cfg["gmm_images"], gmm_pixels=cfg["gmm_pixels"],
                gmm_pixels_few=cfg["gmm_pixels_few"], gmm_seed=cfg["gmm_seed"])


class LabelsFor(luigi.WrapperTask):
    """Builds everything a config's training reads except the coarser run: Lab and label
    shards of the train and val splits, GMM, mean lightness (and the class prior when
    rebalancing); writes nothing itself."""
    config = luigi.IntParameter()
    overrides = luigi.DictParameter(default={})
    dataset = luigi.Parameter(default="")

    def requires(self):
        reqs = TrainFCN32s(config=self.config, overrides=self.overrides, dataset=self.dataset).requires()
        return [t for k, t in sorted(reqs.items()) if k != "init"]


# Config keys that are not part of a training run's identity: the config number
# (two numbers with equal settings are the same experiment) and init_config
# (the init run's own signature stands for it).
_NOT_IN_RUN_SIG = ("config", "init_config")


class TrainFCN(luigi.Task):
    """Base of the training tasks (not run itself)."""
    config = luigi.IntParameter(description="experiment config number (pipeline/config.py)")
    overrides = luigi.DictParameter(default={}, description='JSON dict of config keys to change, e.g. {"lr": 1e-4}')
    dataset = luigi.Parameter(default="", description="dataset root ('' = [colorize] dataset)")
    arch = None            # set by the subclasses
    init_task_class = None

    @property
    def resources(self):
        return {colorize().gpu_resource: 1}

    @cached_property
    def cfg(self):
        return resolve_config(self.config, self.overrides)

    def init_task(self):
        if self.init_task_class is None:
            return None
        init = self.cfg["init_config"] if self.cfg["init_config"] is not None else self.config
        return self.init_task_class(config=init, overrides=self.overrides, dataset=self.dataset)

    def requires(self):
        cfg, ds = self.cfg, self.dataset
        label_train = LabelSplit(**label_params(cfg, ds, cfg["train_split"]))
        reqs = {"train": label_train,
                "val": LabelSplit(**label_params(cfg, ds, cfg["val_split"])),
                "gmm": label_train.gmm_task(),
                "mean": MeanLightness(dataset=ds, im_size=cfg["im_size"], split=cfg["train_split"],
                                      shard_size=cfg["shard_size"], mean_pixels=cfg["mean_pixels"])}
        if self.init_task():
            reqs["init"] = self.init_task()
        if cfg["rebalance"] > 0:       # class rebalancing: the train labels' cluster prior
            reqs["prior"] = ClassPrior(**label_params(cfg, ds, cfg["train_split"]))
        return reqs

    def sig(self):
        reqs = self.requires()
        cfg = {k: v for k, v in self.cfg.items() if k not in _NOT_IN_RUN_SIG}
        return signature("train", arch=self.arch, cfg=cfg, train=reqs["train"].sig(), val=reqs["val"].sig(),
                         mean=reqs["mean"].sig(), init=reqs["init"].sig() if "init" in reqs else None)

    def run_dir(self) -> Path:
        return work_dir() / "runs" / f"{self.arch}-c{self.config}-{self.sig()}"

    def output(self):
        return luigi.LocalTarget(self.run_dir() / "done.json")

    def training_inputs(self):
        """(data dict for train.loop.fit, init checkpoint path or None), from finished inputs.
        Also used by train.distributed, so torchrun trains on exactly what this task would."""
        reqs = self.requires()
        data = {"train": reqs["train"].pairs(), "val": reqs["val"].pairs(),
                "mean_L": json.loads(Path(reqs["mean"].output().path).read_text())["mean_L"],
                "gmm": load_gmm(reqs["gmm"].output().path), "n_clusters": self.cfg["n_clusters"]}
        if "prior" in reqs:
            from pipeline.prior import rebalance_weights
            prior = json.loads(Path(reqs["prior"].output().path).read_text())["prior"]
            data["class_weights"] = rebalance_weights(prior, self.cfg["rebalance"]).tolist()
        init = str(reqs["init"].run_dir() / "best.pt") if "init" in reqs else None
        return data, init

    def run(self):
        from train.loop import fit   # torch is imported only by the worker that trains
        data, init = self.training_inputs()

        def on_step(iteration, total, loss):
            if iteration == total or iteration % max(1, total // 100) == 0:
                self.set_progress_percentage(round(100 * iteration / total))
                self.set_status_message(f"iteration {iteration}/{total}, loss {loss:.4f}")

        result = fit(self.run_dir(), self.cfg, self.arch, data, init_checkpoint=init,
                     device=colorize().device, loader_workers=colorize().loader_workers, on_step=on_step)
        write_text_atomic(self.output().path, json.dumps(result, indent=1, default=float))
        log.info("[train] %s config %d done: %s", self.arch, self.config, self.run_dir())


class TrainFCN32s(TrainFCN):
    """Reads the config's train/val label + Lab shards, mean lightness and GMM; writes
    runs/fcn32s-c<config>-<sig>/ (checkpoint.pt, best.pt, log.csv, config.json, tiles/, plots, tb/, done.json)."""
    arch = "fcn32s"


class TrainFCN16s(TrainFCN):
    """Reads the same as TrainFCN32s plus the best FCN-32s checkpoint of config
    init_config (default: the same config); writes runs/fcn16s-c<config>-<sig>/."""
    arch = "fcn16s"
    init_task_class = TrainFCN32s


class TrainFCN8s(TrainFCN):
    """Reads the same as TrainFCN16s, starting from the best FCN-16s; writes runs/fcn8s-c<config>-<sig>/."""
    arch = "fcn8s"
    init_task_class = TrainFCN16s


# ---------------------------------------------------------------- demo
class SampleDataset(luigi.Task):
    """Reads the colour photos bundled with scikit-image and scikit-learn; writes
    <dest>/ (PNG files + files_train/val/small/tiny.txt)."""
    dest = luigi.Parameter(default="data/samples")

    def output(self):
        return luigi.LocalTarget(Path(self.dest) / "files_train.txt")

    def run(self):
        materialise_samples(self.dest)


class Demo(luigi.Task):
    """Materialises data/samples, then trains FCN-32s and FCN-16s on it with a small
    CPU config; writes nothing of its own, prints where the results are."""
    config = luigi.IntParameter(default=101)
    dest = luigi.Parameter(default="data/samples")
    _done = False

    def complete(self):
        return self._done

    def run(self):
        yield SampleDataset(dest=self.dest)
        fcn16 = TrainFCN16s(config=self.config, dataset=self.dest)
        yield fcn16
        runs = [fcn16.init_task().run_dir(), fcn16.run_dir()]
        lines = ["", "Demo finished. Results:"]
        for run in runs:
            done = json.loads((run / "done.json").read_text())
            lines.append(f"  {run}: best val loss {done.get('best_val_loss', float('nan')):.4f} "
                         f"(iteration {done.get('best_iteration')}); log.csv, loss.png, iou.png, tiles/, tb/")
        print("\n".join(lines), flush=True)
        self._done = True


# ---------------------------------------------------------------- class prior and evaluation
class ClassPrior(LabelParams):
    """Reads a split's label shards (the train split's: the rebalancing prior); writes
    labels/.../prior-<split>-<sig>.json: the empirical prior of the argmax clusters
    (pipeline/prior.py).  Depends only on the LabelSplit signature."""
    split = luigi.Parameter(default="train")

    def label_split(self):
        return LabelSplit(**{k: getattr(self, k) for k in LabelSplit.get_param_names()})

    def requires(self):
        return self.label_split()

    def sig(self):
        return signature("prior", labels=self.label_split().sig())

    def output(self):
        return luigi.LocalTarget(self.label_dir() / f"prior-{self.split}-{self.sig()}.json")

    def run(self):
        from pipeline.prior import cluster_prior
        prior = cluster_prior([label for _, label in self.label_split().pairs()], self.n_clusters)
        write_text_atomic(self.output().path, json.dumps({"split": self.split, **prior}, indent=1))


class Evaluate(luigi.Task, _ProgressMixin):
    """Reads a trained run's best.pt (training it first if needed), the config's val split
    Lab + label shards, the GMM and the mean lightness; writes the run's sibling folder
    runs/<run>-evaluate-<sig>/ (metrics.json, report.html, auc.png, gallery/, the run's
    loss.png + iou.png, gmm.npz) (pipeline/evaluate.py)."""
    config = luigi.IntParameter(description="experiment config number (pipeline/config.py)")
    overrides = luigi.DictParameter(default={}, description="JSON dict of config keys to change")
    dataset = luigi.Parameter(default="", description="dataset root ('' = [colorize] dataset)")
    arch = luigi.ChoiceParameter(choices=["fcn32s", "fcn16s", "fcn8s"], default="fcn16s")
    temperature = luigi.FloatParameter(default=0.38, description="annealed-mean temperature")
    gallery = luigi.IntParameter(default=4, description="best and worst images shown in the report")

    @property
    def resources(self):               # the GPU its training task takes
        return self.train_task().resources

    def train_task(self):
        cls = {"fcn32s": TrainFCN32s, "fcn16s": TrainFCN16s, "fcn8s": TrainFCN8s}[self.arch]
        return cls(config=self.config, overrides=self.overrides, dataset=self.dataset)

    def requires(self):
        return self.train_task()

    def sig(self):
        train = self.train_task()
        return signature("evaluate", run=train.sig(), val=train.requires()["val"].sig(),
                         temperature=self.temperature, gallery=self.gallery)

    def out_dir(self) -> Path:
        run = self.train_task().run_dir()
        return run.parent / f"{run.name}-evaluate-{self.sig()}"

    def output(self):
        return luigi.LocalTarget(self.out_dir() / "metrics.json")

    def run(self):
        from pipeline.evaluate import evaluate_run, metrics_table
        train = self.train_task()
        reqs = train.requires()
        metrics = evaluate_run(
            train.run_dir(), self.out_dir(), reqs["val"].pairs(), load_gmm(reqs["gmm"].output().path),
            json.loads(Path(reqs["mean"].output().path).read_text())["mean_L"],
            temperature=self.temperature, n_gallery=self.gallery, device=colorize().device,
            info={"config": self.config, "overrides": dict(self.overrides), "arch": self.arch,
                  "split": train.cfg["val_split"], "dataset": str(reqs["val"].root())},
            on_image=self._progress_callback("evaluate"))
        log.info("[evaluate] %s on %d %s images: %s\n%s", self.arch, metrics["n_images"],
                 train.cfg["val_split"], self.out_dir(), metrics_table(metrics))
