"""The Luigi graph of colorize-fcn: one task per stage; the work lives in pipeline/,
train/ and inference/.

    luigi --module tasks TrainFCN16s --config 14 --dataset /data/photos

Every output path carries its task's signature (Stage.sig): a hash of the task
class's version, its output-affecting parameters and the signatures of every
task it requires, so a rerun runs exactly the stale stages, and label shards are
shared by every experiment with the same label settings.  The dataset's location
is not part of any signature: shard signatures cover the files' relative paths
and fingerprints (pipeline/plan.py), so a moved dataset rebuilds nothing.
Machine settings come from luigi.cfg's [colorize] section.  Importing this module
does not import torch: training and evaluation import it in the worker that runs them.
"""
import functools
import inspect
import json
import logging
from collections import Counter
from functools import cached_property
from pathlib import Path

import luigi
from luigi.parameter import ParameterVisibility

from models.registry import ARCHITECTURES, DEFAULT_TEMPERATURE
from pipeline import luigi_summary  # noqa: F401  (exit codes under a central scheduler)
from pipeline.atomic import remove_stale_temporaries, write_text_atomic
from pipeline.config import resolve_config
from pipeline.fingerprint import MODES as FINGERPRINT_MODES
from pipeline.gmm import fit_gmm, load_gmm, save_gmm, uniform_grid
from pipeline.luigi_params import ConfigNumberParameter, OverridesParameter
from pipeline.plan import plan_shards
from pipeline.preprocess import build_label_shard, build_lab_shard, gmm_features, mean_lightness
from pipeline.prior import cluster_prior, rebalance_weights
from pipeline.progress import Progress
from pipeline.run_inputs import RunInputs
from pipeline.samples import materialise_samples
from pipeline.shards import COMPRESSION, read_attrs
from pipeline.signature import signature
from pipeline.splits import list_nonempty_split

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
    fingerprint = luigi.ChoiceParameter(default="stat", choices=list(FINGERPRINT_MODES),
                                        description="source change detection: stat | content "
                                                    "(README 'Stale-only reruns')")


def work_dir() -> Path:
    return Path(colorize().work_dir)


@luigi.Task.event_handler(luigi.Event.START)
def _remove_stale_temporaries(task):
    """Before any task writes, clear temporaries that killed writers left beside its outputs."""
    for target in luigi.task.flatten(task.output()):
        if isinstance(target, luigi.LocalTarget):
            remove_stale_temporaries(Path(target.path).parent)


# ---------------------------------------------------------------- the signature of every stage
class Stage(luigi.Task):
    """Base of every task.  sig() = hash(class, version, sig_params(), the sigs of every
    required task): one generic rule, so a stage cannot forget an input.

    complete(): the output exists AND every required task is complete, recursively, so
    deleting any artifact at any depth (a Lab shard below a manifest below a GMM) reruns
    exactly what rebuilds it; a task instance remembers being found complete (Luigi shares
    instances within a process), so the walk visits each task once.  Final products (a trained run) override this: once done, they
    no longer need their inputs."""
    version = 1              # bump when the class's code changes what it writes
    not_in_sig = ("dataset",)   # the dataset's location: the shard signatures cover its files

    def __init_subclass__(cls, **kwargs):
        """Each stage's run() first checks its own outputs: a task is rerun when a deeper artifact
        was deleted, and once that is rebuilt (byte-identical: its name is its signature) the
        task's own outputs still hold, so it writes nothing."""
        super().__init_subclass__(**kwargs)
        work = cls.__dict__.get("run")
        if work is not None and not inspect.isgeneratorfunction(work):
            @functools.wraps(work)
            def run(self):
                if not luigi.Task.complete(self):
                    work(self)
            cls.run = run

    def sig_params(self) -> dict:
        return {name: p.serialize(getattr(self, name)) for name, p in self.get_params()
                if p.significant and name not in self.not_in_sig}

    def sig(self) -> str:
        if "_sig" not in self.__dict__:
            inputs = [t.sig() for t in luigi.task.flatten(self.requires())]
            self.__dict__["_sig"] = signature(self.get_task_family(), version=self.version,
                                              params=self.sig_params(), inputs=inputs)
        return self.__dict__["_sig"]

    def complete(self):
        if not self.__dict__.get("_complete"):
            self.__dict__["_complete"] = super().complete() and all(
                t.complete() for t in luigi.task.flatten(self.requires()))
        return self.__dict__["_complete"]

    @classmethod
    def from_cfg(cls, cfg: dict, **given):
        """The task whose parameters are the config keys of the same names, plus `given`."""
        return cls(**{k: cfg[k] for k in cls.get_param_names() if k in cfg and k not in given}, **given)

    def progress_callback(self, desc):
        bar = Progress(None, desc)     # started now, so the first rate is right

        def on_item(i, n):
            bar.update(1, total=n)
            if i == n or i % max(1, n // 20) == 0:
                self.set_progress_percentage(round(100 * i / max(n, 1)))
                self.set_status_message(f"{desc}: {i}/{n}")
        return on_item


# ---------------------------------------------------------------- Lab shards
class LabParams(Stage):
    dataset = luigi.Parameter(default="", description="dataset root ('' = [colorize] dataset)")
    im_size = luigi.IntParameter(default=256, description="network input side, pixels")

    def root(self) -> Path:
        return Path(self.dataset or colorize().dataset).resolve()

    def out(self, folder: str, name: str) -> luigi.LocalTarget:
        return luigi.LocalTarget(work_dir() / folder / f"s{self.im_size}" / name)


class LabShard(LabParams):
    """Reads the shard's source images; writes lab/s<size>/<sig>.h5
    (L, ab, paths, sizes, fingerprints; skipped files with reasons in attrs)."""
    version = 4              # 4: JPEG draft down to 2x the target only, crop centred on the exact extent
    shard = luigi.Parameter(description="signature of the shard's files (from the split plan)")
    files = luigi.ListParameter(significant=False, visibility=ParameterVisibility.PRIVATE)

    def output(self):
        return self.out("lab", f"{self.sig()}.h5")

    def run(self):
        build_lab_shard(self.root(), list(self.files), self.im_size, self.output().path, sig=self.sig(),
                        on_image=self.progress_callback(f"lab {self.shard}"),
                        compression=colorize().lab_compression, fingerprint=colorize().fingerprint)


class LabSplit(LabParams):
    """Reads a split list and that split's Lab shards; writes
    lab/s<size>/<split>-<sig>.json: the manifest with image and skip counts."""
    split = luigi.Parameter(default="train")
    shard_size = luigi.IntParameter(default=256, description="expected images per shard")

    @cached_property
    def plans(self):
        return plan_shards(self.root(), list_nonempty_split(self.root(), self.split), self.shard_size, self.im_size,
                           fingerprint=colorize().fingerprint, cache_dir=work_dir() / "cache" / "fingerprints")

    def requires(self):
        return [self.clone(LabShard, shard=p.sig, files=p.files) for p in self.plans]

    def output(self):
        return self.out("lab", f"{self.split}-{self.sig()}.json")

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
    """Reads sampled pixels of the training split's Lab shards; writes
    stats/s<size>/mean-L-<sig>.json ({"mean_L": ...})."""
    train_split = luigi.Parameter(default="train")
    shard_size = luigi.IntParameter(default=256)
    mean_pixels = luigi.IntParameter(default=100_000)

    def requires(self):
        return self.clone(LabSplit, split=self.train_split)

    def output(self):
        return self.out("stats", f"mean-L-{self.sig()}.json")

    def run(self):
        write_text_atomic(self.output().path, json.dumps({"mean_L": mean_lightness(
            [t.path for t in self.requires().input()], self.mean_pixels)}))


class GMMParams(LabParams):
    binning = luigi.ChoiceParameter(choices=["soft", "uniform"], default="soft")
    n_clusters = luigi.IntParameter(default=16, description="K")
    train_split = luigi.Parameter(default="train", description="split the GMM is fitted on")
    shard_size = luigi.IntParameter(default=256)
    gmm_images = luigi.IntParameter(default=5000)
    gmm_pixels = luigi.IntParameter(default=20)
    gmm_pixels_few = luigi.IntParameter(default=1000)
    gmm_seed = luigi.IntParameter(default=0)

    def gmm_task(self):
        return self.clone(FitGMM)


class FitGMM(GMMParams):
    """Reads pixels sampled from the train split's Lab shards (soft binning only);
    writes gmm/s<size>/<binning>-k<K>-<sig>.npz (plain arrays, no pickle)."""
    version = 2              # 2: the uniform grid as the original's (gray is a centre)

    def sig_params(self) -> dict:
        if self.binning == "uniform":     # a fixed grid: nothing but K matters
            return {"binning": "uniform", "n_clusters": self.n_clusters}
        return super().sig_params()

    def requires(self):
        return self.clone(LabSplit, split=self.train_split) if self.binning == "soft" else []

    def output(self):
        return self.out("gmm", f"{self.binning}-k{self.n_clusters}-{self.sig()}.npz")

    def run(self):
        if self.binning == "uniform":
            gmm = uniform_grid(self.n_clusters)
        else:
            paths = [t.path for t in self.requires().input()]
            features = gmm_features(paths, self.gmm_images, self.gmm_pixels, self.gmm_pixels_few, self.gmm_seed)
            self.set_status_message(f"fitting {self.n_clusters} components on {len(features)} pixels")
            gmm = fit_gmm(features, self.n_clusters, self.gmm_seed)
        save_gmm(self.output().path, gmm, signature=self.sig())


# ---------------------------------------------------------------- label shards
class LabelParams(GMMParams):
    img_lowpass = luigi.IntParameter(default=8, description="f: blur sigma and downscale factor")

    def label_dir(self) -> str:
        """labels/s<size>/<binning>-k<K>-lp<f>-g<gmm sig>: one folder per label setting."""
        return f"labels/{self.binning}-k{self.n_clusters}-lp{self.img_lowpass}-g{self.gmm_task().sig()}"


class LabelShard(LabelParams):
    """Reads one Lab shard and the GMM; writes labels/s<size>/<setting>/<sig>.h5
    (posteriors (N, K, S/f, S/f) float16, aligned 1:1 with the Lab shard)."""
    shard = luigi.Parameter()
    files = luigi.ListParameter(significant=False, visibility=ParameterVisibility.PRIVATE)

    def requires(self):
        return {"lab": self.clone(LabShard), "gmm": self.gmm_task()}

    def output(self):
        return self.out(self.label_dir(), f"{self.sig()}.h5")

    def run(self):
        gmm = load_gmm(self.input()["gmm"].path)
        build_label_shard(self.input()["lab"].path, gmm, self.img_lowpass, self.output().path,
                          sig=self.sig(), on_image=self.progress_callback(f"labels {self.shard}"))


class LabelSplit(LabelParams):
    """Reads a split's Lab manifest and label shards; writes
    labels/s<size>/<setting>/<split>-<sig>.json listing the (Lab shard, label shard) pairs."""
    split = luigi.Parameter(default="train")

    def requires(self):
        lab = self.clone(LabSplit)
        return {"lab": lab, "labels": [self.clone(LabelShard, shard=t.shard, files=t.files) for t in lab.requires()]}

    def pairs(self):
        """[(lab shard path, label shard path)] of the split, in plan order."""
        return [(t.requires()["lab"].output().path, t.output().path) for t in self.requires()["labels"]]

    def output(self):
        return self.out(self.label_dir(), f"{self.split}-{self.sig()}.json")

    def run(self):
        pairs = [{"lab": Path(a).name, "labels": Path(b).name} for a, b in self.pairs()]
        lab = json.loads(Path(self.input()["lab"].path).read_text())
        write_text_atomic(self.output().path, json.dumps(
            {"split": self.split, "n_images": lab["n_images"], "n_skipped": lab["n_skipped"],
             "pairs": pairs}, indent=1))


class ClassPrior(LabelParams):
    """Reads a split's label shards (the train split's: the rebalancing prior); writes
    labels/s<size>/<setting>/prior-<split>-<sig>.json: the empirical prior of the argmax
    clusters (pipeline/prior.py)."""
    split = luigi.Parameter(default="train")

    def requires(self):
        return self.clone(LabelSplit)

    def output(self):
        return self.out(self.label_dir(), f"prior-{self.split}-{self.sig()}.json")

    def run(self):
        prior = cluster_prior([label for _, label in self.requires().pairs()], self.n_clusters)
        write_text_atomic(self.output().path, json.dumps({"split": self.split, **prior}, indent=1))


# ---------------------------------------------------------------- runs of a config
# Config keys that are not part of a run's identity: the config number (two numbers with
# equal settings are the same experiment) and init_config (the init run's signature stands for it).
_NOT_IN_RUN_SIG = ("config", "init_config")


class ConfigTask(Stage):
    """A task of one experiment: config number + overrides on a dataset, for one architecture."""
    config = ConfigNumberParameter(description="experiment config number (pipeline/config.py)")
    overrides = OverridesParameter(default={}, description='JSON dict of config keys to change, e.g. {"lr": 1e-4}')
    dataset = luigi.Parameter(default="", description="dataset root ('' = [colorize] dataset)")

    @cached_property
    def cfg(self):
        return resolve_config(self.config, self.overrides)

    def sig_params(self) -> dict:
        return {"cfg": {k: v for k, v in self.cfg.items() if k not in _NOT_IN_RUN_SIG},
                **{k: v for k, v in super().sig_params().items() if k not in ("config", "overrides")}}

    def train_task(self, arch: str):
        return TRAIN_TASKS[arch](config=self.config, overrides=self.overrides, dataset=self.dataset)


class PrepareRun(ConfigTask):
    """Builds everything a run trains on except the coarser run it starts from: Lab and
    label shards of the train and val splits, GMM, mean lightness (and the class prior when
    rebalancing); writes <run>/inputs.json (pipeline/run_inputs.py), which training reads
    (also `torchrun -m train.distributed --run-dir <run>`)."""
    arch = luigi.ChoiceParameter(choices=list(ARCHITECTURES), default="fcn32s")

    def requires(self):
        cfg, ds = self.cfg, self.dataset
        reqs = {"train": LabelSplit.from_cfg(cfg, dataset=ds, split=cfg["train_split"]),
                "val": LabelSplit.from_cfg(cfg, dataset=ds, split=cfg["val_split"]),
                "mean": MeanLightness.from_cfg(cfg, dataset=ds)}
        reqs["gmm"] = reqs["train"].gmm_task()
        if cfg["rebalance"] > 0:       # class rebalancing: the train labels' cluster prior
            reqs["prior"] = ClassPrior.from_cfg(cfg, dataset=ds, split=cfg["train_split"])
        return reqs

    def run_dir(self) -> Path:
        return self.train_task(self.arch).run_dir()

    def output(self):
        return luigi.LocalTarget(self.run_dir() / "inputs.json")

    def run(self):
        reqs, init = self.requires(), self.train_task(self.arch).init_task()
        class_weights = None
        if "prior" in reqs:
            prior = json.loads(Path(reqs["prior"].output().path).read_text())["prior"]
            class_weights = rebalance_weights(prior, self.cfg["rebalance"]).tolist()
        RunInputs(arch=self.arch, cfg=dict(self.cfg), train=reqs["train"].pairs(), val=reqs["val"].pairs(),
                  mean_L=json.loads(Path(reqs["mean"].output().path).read_text())["mean_L"],
                  gmm={k: v.tolist() for k, v in load_gmm(reqs["gmm"].output().path).items()},
                  init_checkpoint=str(init.run_dir() / "best.pt") if init else None,
                  class_weights=class_weights, dataset=str(reqs["train"].root()),
                  extra={"task": self.task_id}).save(self.run_dir())
        print(f"[prepare] {self.arch} config {self.config}: {self.output().path}", flush=True)


class TrainRun(ConfigTask):
    """Base of the training tasks (one per registered architecture, made below)."""
    arch = None            # set by each generated class
    version = 2

    @property
    def resources(self):
        return {colorize().gpu_resource: 1}

    def init_task(self):
        """The finished coarser run this one starts from (None when trained from scratch)."""
        coarser = ARCHITECTURES[self.arch].init_from
        if coarser is None:
            return None
        init = self.cfg["init_config"] if self.cfg["init_config"] is not None else self.config
        return TRAIN_TASKS[coarser](config=init, overrides=self.overrides, dataset=self.dataset)

    def requires(self):
        reqs = {"inputs": self.clone(PrepareRun, arch=self.arch)}
        if self.init_task():
            reqs["init"] = self.init_task()
        return reqs

    def run_dir(self) -> Path:
        return work_dir() / "runs" / f"{self.arch}-c{self.config}-{self.sig()}"

    def output(self):
        return {"done": luigi.LocalTarget(self.run_dir() / "done.json"),
                "best": luigi.LocalTarget(self.run_dir() / "best.pt")}

    def complete(self):
        # a finished run no longer needs its inputs: it is complete while its files exist
        return all(t.exists() for t in luigi.task.flatten(self.output()))

    def run(self):
        from train.fit import fit   # torch is imported only by the worker that trains

        def on_step(iteration, total, loss):
            if iteration == total or iteration % max(1, total // 100) == 0:
                self.set_progress_percentage(round(100 * iteration / total))
                self.set_status_message(f"iteration {iteration}/{total}, loss {loss:.4f}")

        fit(self.run_dir(), RunInputs.load(self.run_dir()), device=colorize().device,
            loader_workers=colorize().loader_workers, on_step=on_step)
        log.info("[train] %s config %d done: %s", self.arch, self.config, self.run_dir())


def _train_task_class(arch):
    coarser = f", starting from the best {arch.init_from} run of config init_config (default: the same)" \
        if arch.init_from else ""
    doc = (f"{arch.summary}.  Reads <run>/inputs.json (PrepareRun){coarser}; writes "
           f"runs/{arch.name}-c<config>-<sig>/ (checkpoint.pt, best.pt, log.csv, config.json, tiles/, "
           f"loss.png, iou.png, tb/, done.json; train/fit.py).")
    return type(arch.task, (TrainRun,), {"arch": arch.name, "__doc__": doc, "__module__": __name__})


# One training task per registered architecture: TrainFCN32s, TrainFCN16s, TrainFCN8s, ...
TRAIN_TASKS = {name: _train_task_class(arch) for name, arch in ARCHITECTURES.items()}
globals().update({cls.__name__: cls for cls in TRAIN_TASKS.values()})


# ---------------------------------------------------------------- evaluation and the demo
class Evaluate(ConfigTask):
    """Reads a trained run's best.pt (training it first if needed) and its validation split
    (from the run's inputs.json); writes <run>/eval-<sig>/ (metrics.json, report.html,
    auc.png, gallery/, the run's loss.png + iou.png; inference/evaluate.py)."""
    arch = luigi.ChoiceParameter(choices=list(ARCHITECTURES), default="fcn16s")
    temperature = luigi.FloatParameter(default=DEFAULT_TEMPERATURE, description="annealed-mean temperature")
    gallery = luigi.IntParameter(default=4, description="best and worst images shown in the report")

    @property
    def resources(self):               # the GPU its training task takes
        return self.requires().resources

    def requires(self):
        return self.train_task(self.arch)

    def complete(self):                # like the run it reads: complete while its files exist
        return self.output().exists()

    def out_dir(self) -> Path:
        return self.requires().run_dir() / f"eval-{self.sig()}"

    def output(self):
        return luigi.LocalTarget(self.out_dir() / "metrics.json")

    def run(self):
        from inference.evaluate import evaluate_run
        from inference.report import metrics_table
        run = self.requires()
        inputs = RunInputs.load(run.run_dir())
        metrics = evaluate_run(
            run.run_dir() / "best.pt", self.out_dir(), inputs.val, temperature=self.temperature,
            n_gallery=self.gallery, device=colorize().device,
            info={"config": self.config, "overrides": dict(self.overrides), "arch": self.arch,
                  "split": self.cfg["val_split"], "dataset": inputs.dataset},
            on_image=self.progress_callback("evaluate"))
        log.info("[evaluate] %s on %d %s images: %s\n%s", self.arch, metrics["n_images"],
                 self.cfg["val_split"], self.out_dir(), metrics_table(metrics))


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
        fcn16 = TRAIN_TASKS["fcn16s"](config=self.config, dataset=self.dest)
        yield fcn16
        lines = ["", "Demo finished. Results:"]
        for run in (fcn16.init_task().run_dir(), fcn16.run_dir()):
            done = json.loads((run / "done.json").read_text())
            lines.append(f"  {run}: best val loss {done.get('best_val_loss', float('nan')):.4f} "
                         f"(iteration {done.get('best_iteration')}); log.csv, loss.png, iou.png, tiles/, tb/")
        print("\n".join(lines), flush=True)
        self._done = True
