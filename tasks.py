"""The Luigi graph of colorize-fcn: one task per stage; the work lives in pipeline/,
train/ and inference/.

    luigi --module tasks TrainFCN16s --config 14 --dataset /data/photos

Every output path carries its task's signature (Stage.sig): a hash of the task
class's version, its output-affecting parameters and the signatures of every
task it requires, so a rerun runs exactly the stale stages, and label shards are
shared by every experiment with the same label settings.  The one exception is the
GMM, signed by the images it samples (FitGMM), so that a new image outside its sample
rebuilds no label shard.  Shards reach Luigi in batches (ShardBatch): its scheduler
does work in proportion to the task count for every task it hands out.  The dataset's location
is not part of any signature: shard signatures cover the files' relative paths
and fingerprints (pipeline/plan.py), so a moved dataset rebuilds nothing.
Machine settings come from luigi.cfg's [colorize] section.  Importing this module
does not import torch: training and evaluation import it in the worker that runs them.
"""
import atexit
import json
import logging
from collections import Counter
from functools import cached_property
from pathlib import Path

import luigi
from luigi.cmdline_parser import CmdlineParser
from luigi.parameter import ParameterVisibility

from inference.evaluated import as_target, check_same_gmm, describe_evaluation, evaluation_record
from models.registry import ARCHITECTURES, DEFAULT_TEMPERATURE
from pipeline import luigi_cmdline, luigi_summary  # noqa: F401  (one-line command-line errors; exit codes)
from pipeline.atomic import write_text_atomic
from pipeline.config import ConfigError, config_name, resolve_config
from pipeline.gmm import fit_gmm, load_gmm, save_gmm, uniform_grid
from pipeline.luigi_params import ConfigNumberParameter, OverridesParameter, check_memory, check_named_task
from pipeline.memory import shard_needs, training_needs
from pipeline.plan import batch_plans, plan_shards, sample_files
from pipeline.preprocess import build_label_shard, build_lab_shard, gmm_features, mean_lightness
from pipeline.prior import cluster_prior, rebalance_weights
from pipeline.progress import say
from pipeline.run_inputs import RunInputs
from pipeline.samples import materialise_samples
from pipeline.shards import ShardError, read_attrs
from pipeline.signature import hash_strings, signature
from pipeline.splits import ALL_SPLIT, list_nonempty_split
from pipeline.stage import MAX_SHARD_TASKS, ShardBatch, Stage, check_work_dir, colorize, once, stage_of
from pipeline.sweep import ConfigListParameter, OverridesGridParameter, expand_grid, parse_configs, parse_grid
from pipeline.textures import generate_textures

log = logging.getLogger("luigi-interface")
luigi_summary.refuse_without_config()


# ---------------------------------------------------------------- Lab shards
class LabParams(Stage):
    dataset = luigi.Parameter(default="", description="dataset root ('' = [colorize] dataset)")
    im_size = luigi.IntParameter(default=256, description="network input side, pixels")

    def root(self) -> Path:
        return Path(self.dataset or self.settings.dataset).resolve()

    def out_dir(self, folder: str) -> Path:
        return self.work_dir() / folder / f"s{self.im_size}"

    def out(self, folder: str, name: str) -> luigi.LocalTarget:
        return luigi.LocalTarget(self.out_dir(folder) / name)


class LabShard(ShardBatch, LabParams):
    """Reads each shard's source images; writes lab/s<size>/<shard sig>.h5 per shard
    (L, ab, ab_sums, paths, sizes, fingerprints; skipped files with reasons in attrs)."""
    version = 6              # 4: JPEG draft down to 2x the target only, crop centred on the exact extent
    #                          5: strings (paths, fingerprints) checksummed (pipeline.shards._create_strings)
    #                          6: compact layout (uint8 L, int8 a/b: shards.LAB_LAYOUT)
    # (ab_sums, added later, is derived from the shard's own a/b: version-6 shards without it give
    # the label stage the same labels bit for bit, read more slowly, so they are not rebuilt.)

    def shard_folder(self) -> str:
        return "lab"

    def build_shard(self, i, path, on_image):
        build_lab_shard(self.root(), list(self.files[i]), self.im_size, path, sig=self.shard_sigs()[i],
                        on_image=on_image, compression=self.settings.lab_compression,
                        fingerprint=self.settings.fingerprint)


class LabSplit(LabParams):
    """Reads a split list and that split's Lab shards; writes
    lab/s<size>/<split>-<sig>.json: the manifest with image and skip counts."""
    split = luigi.Parameter(default="train")
    shard_size = luigi.IntParameter(default=256, description="expected images per shard")

    @cached_property
    def plans(self):
        return plan_shards(self.root(), list_nonempty_split(self.root(), self.split), self.shard_size, self.im_size,
                           fingerprint=self.settings.fingerprint,
                           cache_dir=self.work_dir() / "cache" / "fingerprints")

    @cached_property
    def batches(self) -> list:
        return [LabShard.of(self, plans) for plans in batch_plans(self.plans, MAX_SHARD_TASKS)]

    def requires(self):
        return self.batches

    def shard_paths(self) -> list:
        """Every Lab shard of the split, in plan order."""
        return [t.path for batch in self.batches for t in batch.output()]

    def output(self):
        return self.out("lab", f"{self.split}-{self.sig()}.json")

    def run(self):
        manifest = summarise_split(self.root(), self.split, self.shard_paths())
        reasons = ", ".join(f"{k} {v}" for k, v in manifest["skip_reasons"].items()) or "none"
        if manifest["n_images"] == 0:       # nothing downstream can use it: say so here, not at training
            raise ValueError(f"split '{self.split}' of {self.root()} has no usable image: all "
                             f"{manifest['n_skipped']} listed were skipped ({reasons}); add readable images "
                             f"to it (a plain folder's split is a hash of the file name) or choose another split")
        write_text_atomic(self.output().path, json.dumps(manifest, indent=1))
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
            self.requires().shard_paths(), self.mean_pixels)}))


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
    """Reads pixels of a sample of the train split's images from their Lab shards (soft
    binning only); writes gmm/s<size>/<binning>-k<K>-<sig>.npz (plain arrays, no pickle).

    Early cutoff: the sample is the gmm_images listed files of smallest pipeline.plan.sample_key
    (a hash of the relative path), and the fit depends on those images alone
    (preprocess.gmm_features), so the GMM is signed by them -- their paths and fingerprints,
    the Lab conversion's version, the GMM parameters -- instead of by every Lab shard.  A new
    or changed image outside the sample then leaves the GMM's signature, its file, the label
    folder and every other label shard as they are.  For the same reason a fitted GMM is
    complete while its file exists: a Lab shard rebuilt for another image does not refit it."""
    version = 2              # 2: the uniform grid as the original's (gray is a centre)
    not_in_sig = ("dataset", "shard_size", "train_split")   # the sample's identity covers what they chose

    def sig_params(self) -> dict:
        if self.binning == "uniform":     # a fixed grid: nothing but K matters
            return {"binning": "uniform", "n_clusters": self.n_clusters}
        return super().sig_params()

    def sig_inputs(self) -> list:
        if self.binning == "uniform":
            return []
        files = hash_strings(f"{rp}\t{fp}" for rp, fp, _ in self.sample)
        return [signature("GMM sample", lab_version=LabShard.version, files=files)]

    @cached_property
    def lab_split(self):
        return self.clone(LabSplit, split=self.train_split)

    @cached_property
    def sample(self) -> list:
        """[(relpath, fingerprint, plan index)] of the sampled images (pipeline.plan.sample_files)."""
        return sample_files(self.lab_split.plans, self.gmm_images, self.gmm_seed)

    @once
    def requires(self):
        """The Lab shard batches that hold the sample."""
        if self.binning == "uniform":
            return []
        wanted = {i for _, _, i in self.sample}
        batches, first = [], 0
        for batch in self.lab_split.batches:
            if any(first + j in wanted for j in range(len(batch.shards))):
                batches.append(batch)
            first += len(batch.shards)
        return batches

    def complete(self):
        return self.output().exists()

    def output(self):
        return self.out("gmm", f"{self.binning}-k{self.n_clusters}-{self.sig()}.npz")

    def run(self):
        if self.binning == "uniform":
            gmm = uniform_grid(self.n_clusters)
        else:
            paths = self.lab_split.shard_paths()
            shards = sorted({i for _, _, i in self.sample})
            features = gmm_features([paths[i] for i in shards], self.gmm_images, self.gmm_pixels,
                                    self.gmm_pixels_few, self.gmm_seed, only={rp for rp, _, _ in self.sample})
            self.set_status_message(f"fitting {self.n_clusters} components on {len(features)} pixels")
            gmm = fit_gmm(features, self.n_clusters, self.gmm_seed)
        save_gmm(self.output().path, gmm, signature=self.sig())


# ---------------------------------------------------------------- label shards
class LabelParams(GMMParams):
    img_lowpass = luigi.IntParameter(default=8, description="f: blur sigma and downscale factor")
    gmm_dataset = luigi.Parameter(default="", description="dataset root whose GMM labels these images "
                                  "('' = dataset): a run's own GMM on a folder it never saw")
    not_in_sig = ("dataset", "gmm_dataset")     # the GMM's signature is an input: it covers its sample

    def gmm_task(self):
        return self.clone(FitGMM, dataset=self.gmm_dataset or self.dataset)

    def label_dir(self) -> str:
        """labels/<binning>-k<K>-lp<f>-g<gmm sig>: one folder per label setting (then s<size>/)."""
        return f"labels/{self.binning}-k{self.n_clusters}-lp{self.img_lowpass}-g{self.gmm_task().sig()}"


class LabelShard(ShardBatch, LabelParams):
    """Reads each shard's Lab shard and the GMM; writes labels/<setting>/s<size>/<shard sig>.h5
    per shard (posteriors (N, K, S/f, S/f) float16, aligned 1:1 with the Lab shard)."""
    version = 2              # 2: paths checksummed (pipeline.shards._create_strings)

    @once
    def requires(self):
        # the Lab batch as the LabSplit of the same split made it (its progress counts Lab shards)
        lab_stage = {**self.stage, "family": "LabSplit"} if self.stage else {}
        return {"lab": self.clone(LabShard, stage=lab_stage), "gmm": self.gmm_task()}

    def shard_folder(self) -> str:
        return self.label_dir()

    @cached_property
    def gmm(self) -> dict:
        return load_gmm(self.input()["gmm"].path)

    def build_shard(self, i, path, on_image):
        build_label_shard(self.input()["lab"][i].path, self.gmm, self.img_lowpass, path,
                          sig=self.shard_sigs()[i], on_image=on_image)


class LabelSplit(LabelParams):
    """Reads a split's Lab manifest and label shards; writes
    labels/<setting>/s<size>/<split>-<sig>.json listing the (Lab shard, label shard) pairs."""
    split = luigi.Parameter(default="train")

    @once
    def requires(self):
        lab = self.clone(LabSplit)
        return {"lab": lab, "labels": [self.clone(LabelShard, batch=t.batch, shards=t.shards, files=t.files,
                                                  stage=stage_of(self)) for t in lab.batches]}

    def shard_paths(self) -> list:
        """Every label shard of the split, in plan order."""
        return [label for _, label in self.pairs()]

    def pairs(self):
        """[(lab shard path, label shard path)] of the split, in plan order."""
        return [(lab.path, label.path) for t in self.requires()["labels"]
                for lab, label in zip(t.requires()["lab"].output(), t.output())]

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
    labels/<setting>/s<size>/prior-<split>-<sig>.json: the empirical prior of the argmax
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

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        check_named_task(self, self.preflight)          # `luigi ... <this task>`: one line, exit 35

    def preflight(self) -> None:
        """What the named task checks while the command line is parsed: every config it trains
        resolves, and the work dir can hold outputs."""
        self.runs                                         # noqa: B018 (resolves and checks them)
        check_work_dir(self.work_dir())

    @cached_property
    def cfg(self):
        return resolve_config(self.config, self.overrides)

    @cached_property
    def runs(self) -> list:
        """This config's training task and the coarser runs it starts from, each config resolved:
        a ConfigError (one line) when one is invalid or its keys do not fit together."""
        runs = [self.own_run()]
        while runs[-1].init_task() is not None:
            runs.append(runs[-1].init_task())
        for run in runs:
            run.cfg                                       # noqa: B018 (resolves and checks it)
        return runs

    def memory_needs(self, device_kind: str) -> list:
        """What this task's own work needs in memory (pipeline.memory.Need); none by default."""
        return []

    def deps(self):
        """Luigi asks only the tasks it will run (never complete ones), all before any task runs:
        refuse what this task's work cannot fit in this machine's memory, warn for what is large."""
        check_memory(self.memory_needs, self.settings.device, config_name(self.config, self.overrides))
        return super().deps()

    def sig_params(self) -> dict:
        return {"cfg": {k: v for k, v in self.cfg.items() if k not in _NOT_IN_RUN_SIG},
                **{k: v for k, v in super().sig_params().items() if k not in ("config", "overrides")}}

    def train_task(self, arch: str):
        return TRAIN_TASKS[arch](config=self.config, overrides=self.overrides, dataset=self.dataset)

    def own_run(self):
        """The training task of this task's config and arch."""
        return self.train_task(self.arch)

    def command_line_args(self) -> str:
        """--config, --arch, --overrides, --dataset as a shell command line gives them."""
        args = f"--config {self.config}" + (f" --arch {self.arch}" if getattr(self, "arch", None) else "")
        if self.overrides:
            args += f" --overrides '{json.dumps(dict(self.overrides), separators=(',', ':'))}'"
        return args + (f" --dataset {self.dataset}" if self.dataset else "")


class PrepareRun(ConfigTask):
    """Builds everything a run trains on except the coarser run it starts from: Lab and
    label shards of the train and val splits, GMM, mean lightness (and the class prior when
    rebalancing); writes <run>/inputs.json (pipeline/run_inputs.py), which training reads
    (also `torchrun -m train.distributed --run-dir <run>`)."""
    arch = luigi.ChoiceParameter(choices=list(ARCHITECTURES), default="fcn32s")

    def memory_needs(self, device_kind: str) -> list:
        return shard_needs(self.cfg)

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
        say(f"[prepare] {self.arch} config {self.config}: {self.output().path}")


class TrainRun(ConfigTask):
    """Base of the training tasks (one per registered architecture, made below)."""
    arch = None            # set by each generated class
    version = 2

    @property
    def resources(self):
        return {self.settings.gpu_resource: 1}

    def own_run(self):
        return self              # (while Luigi makes this task, a clone of it would be a new one)

    def init_task(self):
        """The finished coarser run this one starts from (None when trained from scratch)."""
        coarser = ARCHITECTURES[self.arch].init_from
        if coarser is None:
            return None
        init = self.cfg["init_config"] if self.cfg["init_config"] is not None else self.config
        return TRAIN_TASKS[coarser](config=init, overrides=self.overrides, dataset=self.dataset)

    def memory_needs(self, device_kind: str) -> list:
        return training_needs(self.cfg, self.arch, device_kind)

    def requires(self):
        reqs = {"inputs": self.clone(PrepareRun, arch=self.arch)}
        if self.init_task():
            reqs["init"] = self.init_task()
        return reqs

    def run_dir(self) -> Path:
        return self.work_dir() / "runs" / f"{self.arch}-c{self.config}-{self.sig()}"

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

        fit(self.run_dir(), RunInputs.load(self.run_dir()), device=self.settings.device,
            loader_workers=self.settings.loader_workers, on_step=on_step)
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
    """Reads a trained run's best.pt (training it first if needed) and the Lab + label shards
    it is scored on: by default the run's own validation split (from its inputs.json), --split
    of its dataset, or --images DIR: every image below DIR (that folder's 'all' split, its
    shards cached like any split's and labelled with the run's GMM and label settings); writes
    <run>/eval-<sig>/ (metrics.json with what was evaluated, report.html, auc.png, gallery/, the
    run's loss.png + iou.png; inference/evaluate.py)."""
    arch = luigi.ChoiceParameter(choices=list(ARCHITECTURES), default="fcn16s")
    split = luigi.Parameter(default="", description="split to evaluate on ('' = the config's val_split)")
    images = luigi.Parameter(default="", description="a folder of images to evaluate on instead of a "
                                                     "split: every image file below it")
    temperature = luigi.FloatParameter(default=DEFAULT_TEMPERATURE, description="annealed-mean temperature")
    gallery = luigi.IntParameter(default=4, description="best and worst images shown in the report")
    expect_run = luigi.Parameter(default="", significant=False, visibility=ParameterVisibility.PRIVATE,
                                 description="the run folder this must score (colorize-fcn evaluate): "
                                             "refuse to train another")
    not_in_sig = ("dataset", "images")   # locations: the shard signatures cover the files

    @property
    def resources(self):               # the GPU its training task takes
        return self.train_task(self.arch).resources

    @once
    def requires(self):
        run = self.train_task(self.arch)
        if self.expect_run and run.run_dir().resolve() != Path(self.expect_run).resolve():
            raise ConfigError(f"{self.expect_run} is not the run of config {self.config} as it is now "
                              f"(that is {run.run_dir().name}): its config changed since it was trained")
        if self.split and self.images:
            raise ConfigError("give --split or --images, not both")
        reqs = {"run": run}
        if self.images:
            reqs["split"] = LabelSplit.from_cfg(self.cfg, dataset=self.images, split=ALL_SPLIT,
                                                gmm_dataset=self.dataset or self.settings.dataset)
        elif self.split:
            reqs["split"] = LabelSplit.from_cfg(self.cfg, dataset=self.dataset, split=self.split)
        return reqs

    def complete(self):                # like the run it reads: complete while its files exist
        return self.output().exists()

    def out_dir(self) -> Path:
        return self.requires()["run"].run_dir() / f"eval-{self.sig()}"

    def output(self):
        return luigi.LocalTarget(self.out_dir() / "metrics.json")

    def run(self):
        from inference.evaluate import evaluate_run
        from inference.report import metrics_table
        run, labels = self.requires()["run"], self.requires().get("split")
        inputs = RunInputs.load(run.run_dir())
        split = self.split or self.cfg["val_split"]
        pairs = labels.pairs() if labels else inputs.val
        gone = [path for pair in pairs for path in pair if not Path(path).is_file()]
        if gone:                       # the run is complete without its caches: gc may have removed them
            raise ShardError(f"{len(gone)} shard file(s) of the run's {split} split are gone (e.g. {gone[0]}; "
                             f"`colorize-fcn gc` removes caches of finished runs): rebuild them with "
                             f"`luigi --module tasks PrepareRun {self.command_line_args()}` and rerun")
        if labels:
            check_same_gmm(labels.gmm_task().output().path, inputs.gmm_arrays(), run.run_dir())
        where = {"folder": str(Path(self.images).resolve())} if self.images else \
            {"dataset": str(labels.root()) if labels else inputs.dataset, "split": split}
        evaluated = evaluation_record(where, summarise_split(None, split, [lab for lab, _ in pairs]),
                                      held_out=bool(self.images) or split != self.cfg["train_split"])
        metrics = evaluate_run(
            run.run_dir() / "best.pt", self.out_dir(), pairs, temperature=self.temperature,
            n_gallery=self.gallery, device=self.settings.device, evaluated_on=evaluated,
            info={"config": self.config, "overrides": dict(self.overrides), "arch": self.arch, **where},
            on_image=self.progress_callback("evaluate"))
        log.info("[evaluate] %s on %s: %s\n%s", self.arch, describe_evaluation(evaluated), self.out_dir(),
                 metrics_table(metrics))


class Sweep(Stage):
    """Trains and evaluates every combination of --configs x --overrides-grid (each on top of
    --overrides): one Evaluate per combination, so runs train in parallel with several workers,
    one per GPU through [resources], and runs with the same label settings share every Lab and
    label shard (the same tasks); reads their metrics, logs and best.pt; writes
    sweeps/sweep-<sig>/compare.html (inference/compare.py) on one evaluation set: --on, else
    the first config's val split."""
    configs = ConfigListParameter(description="config numbers, e.g. 14,32")
    overrides = OverridesParameter(default={}, description="JSON dict of config keys every run changes")
    overrides_grid = OverridesGridParameter(default="{}", description='JSON dict of lists, e.g. {"lr": [1e-5, 1e-6]}')
    dataset = luigi.Parameter(default="", description="dataset root ('' = [colorize] dataset)")
    arch = luigi.ChoiceParameter(choices=list(ARCHITECTURES), default="fcn32s")
    on = luigi.Parameter(default="", description="split name or folder every run is scored on "
                                                 "('' = the first config's val split)")
    gallery = luigi.IntParameter(default=4, description="photos on the compare page")
    not_in_sig = ("dataset", "on")       # the evaluations' signatures cover what they read

    @once
    def combinations(self) -> list:
        """[(config number, overrides)] in --configs x --overrides-grid order."""
        combos = expand_grid(parse_grid(self.overrides_grid))
        return [(n, {**self.overrides, **c}) for n in parse_configs(self.configs) for c in combos]

    @once
    def target(self):
        """What every run is scored on: --on (a folder only when it names one), else the first
        combination's val split."""
        if self.on:
            return as_target(self.on)
        return resolve_config(*self.combinations()[0])["val_split"]

    @once
    def requires(self):
        split, evals = self.target(), []
        for number, overrides in self.combinations():
            ev = Evaluate(config=number, overrides=overrides, dataset=self.dataset, arch=self.arch,
                          gallery=self.gallery)
            if isinstance(split, Path):
                ev = ev.clone(images=str(split))
            elif split != ev.cfg["val_split"]:
                ev = ev.clone(split=split)
            evals.append(ev)
        return evals

    def output(self):
        return luigi.LocalTarget(self.work_dir() / "sweeps" / f"sweep-{self.sig()}" / "compare.html")

    def run(self):
        from inference.compare import compare
        runs = [ev.requires()["run"].run_dir() for ev in self.requires()]
        code = compare(runs, self.target(), self.output().path, self.gallery, evaluate=False, device=self.settings.device,
                       log=log.info)
        if code:
            raise RuntimeError(f"the compare page of {len(runs)} runs was not written (exit {code})")
        log.info("[sweep] %d runs compared: %s", len(runs), self.output().path)


class SampleDataset(luigi.Task):
    """Reads the colour photos bundled with scikit-image and scikit-learn; writes
    <dest>/ (PNG files + files_train/val/small/tiny.txt)."""
    dest = luigi.Parameter(default="data/samples")

    def output(self):
        return luigi.LocalTarget(Path(self.dest) / "files_train.txt")

    def run(self):
        materialise_samples(self.dest)


class TextureDataset(luigi.Task):
    """Generates textures whose colour follows from the lightness (pipeline/textures.py); writes
    <dest>/ (train/ and val/ PNGs + files_train/val.txt)."""
    dest = luigi.Parameter(default="data/textures")
    n_train = luigi.IntParameter(default=400)
    n_val = luigi.IntParameter(default=100)
    size = luigi.IntParameter(default=64, description="image side, px")
    seed = luigi.IntParameter(default=0)

    def output(self):
        return luigi.LocalTarget(Path(self.dest) / "files_train.txt")

    def run(self):
        generate_textures(self.dest, self.n_train, self.n_val, self.size, self.seed)


class Demo(luigi.Task):
    """Materialises data/samples, trains FCN-32s then FCN-16s on its training photos with a
    small CPU config, evaluates FCN-16s on the held-out val photos and colorizes one of them;
    writes <run>/demo/<photo>.png and prints, last, where everything is."""
    config = ConfigNumberParameter(default=101, description="experiment config number (pipeline/config.py)")
    dest = luigi.Parameter(default="data/samples")
    _done = False

    def complete(self):
        return self._done

    def run(self):
        from inference.demo import announce_stages, colorize_one, demo_summary   # torch: only in this worker
        from pipeline.samples import SAMPLE_VAL
        announce_stages(resolve_config(self.config)["max_iteration"])
        yield SampleDataset(dest=self.dest)
        fcn16 = TRAIN_TASKS["fcn16s"](config=self.config, dataset=self.dest)
        evaluation = Evaluate(config=self.config, dataset=self.dest, arch="fcn16s", split="val")
        yield [fcn16, evaluation]
        photo = Path(self.dest) / f"{SAMPLE_VAL[0]}.png"            # held out: not a training photo
        coloured = colorize_one(fcn16.run_dir(), photo, fcn16.run_dir() / "demo" / photo.name,
                                colorize().device)
        summary = demo_summary([fcn16.init_task().run_dir(), fcn16.run_dir()], evaluation.out_dir(), coloured,
                               evaluation.split)
        if CmdlineParser.get_instance() is None:       # luigi.build() from Python: print it now
            say(summary)
        else:                                          # `luigi ... Demo`: after Luigi's own summary
            atexit.register(say, summary)
        self._done = True
