"""The Luigi machinery every stage of tasks.py shares: the [colorize] machine settings,
Stage (signature of a task = hash of its class's version, its output-affecting parameters
and the signatures of everything it requires; a deep complete()), and ShardBatch (one Luigi
task builds a batch of shards, each named by its own signature).  tasks.py holds only the
graph: which stage reads and writes what.
"""
import functools
import inspect
import os
import tempfile
from functools import cached_property
from pathlib import Path

import luigi
from luigi.parameter import ParameterVisibility

from pipeline.atomic import remove_stale_temporaries
from pipeline.config import ConfigError
from pipeline.fingerprint import MODES as FINGERPRINT_MODES
from pipeline.progress import Progress, StageProgress
from pipeline.shards import COMPRESSION, LAB_COMPRESSION
from pipeline.signals import stop_point
from pipeline.signature import hash_strings, signature


def check_work_dir(path) -> None:
    """Refuse, in one line (ConfigError), a work dir that cannot hold outputs: a file, or a place
    where a folder cannot be made or written (`/proc/x`, a read-only disk).  It is made, as
    the run would make it, and a probe file is written there and removed; without this, every
    shard task failed on its own, one error line each."""
    path = Path(path)
    where = "(--colorize-work-dir or luigi.cfg [colorize] work_dir)"
    if path.exists() and not path.is_dir():
        raise ConfigError(f"work dir {path} is not a folder {where}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"work dir {path} cannot hold outputs: {e.strerror or e} {where}") from None


class colorize(luigi.Config):
    """Machine settings: [colorize] in luigi.cfg."""
    work_dir = luigi.Parameter(default="work", description="root of every output")
    dataset = luigi.Parameter(default="data/samples", description="default dataset root")
    device = luigi.Parameter(default="auto", description="auto | cpu | cuda | cuda:N")
    loader_workers = luigi.IntParameter(default=2, description="DataLoader worker processes")
    lab_compression = luigi.ChoiceParameter(
        default=LAB_COMPRESSION, choices=sorted(k for k in COMPRESSION if k),
        description="Lab shards' a/b storage: a disk-vs-CPU choice that does not change what is read back")
    gpu_resource = luigi.Parameter(default="gpu", description="[resources] name a training task takes 1 of "
                                   "(per-host names, e.g. gpu_host1, with a central scheduler)")
    fingerprint = luigi.ChoiceParameter(default="stat", choices=list(FINGERPRINT_MODES),
                                        description="source change detection: stat | content "
                                                    "(README 'Stale-only reruns')")


def once(method):
    """Memoise a method without arguments on its task instance.  Luigi shares task
    instances within a process, and the graph walks (scheduling, deep complete(), sig())
    ask the same task for the same thing many times; each answer is fixed for its parameters."""
    key = f"_once_{method.__name__}"

    @functools.wraps(method)
    def memoised(self):
        if key not in self.__dict__:
            self.__dict__[key] = method(self)
        return self.__dict__[key]
    return memoised


_CLEARED = set()     # output folders cleared of stale temporaries by this process


@luigi.Task.event_handler(luigi.Event.START)
def _remove_stale_temporaries(task):
    """Before any task writes, clear temporaries that killed writers left beside its outputs.
    Once per folder and process: a shard folder holds thousands of files, and listing it for
    every task cost ~35 ms a task here; a writer that dies later leaves its temporary to the
    next run (it is never read)."""
    folders = {Path(t.path).parent for t in luigi.task.flatten(task.output()) if isinstance(t, luigi.LocalTarget)}
    for folder in folders - _CLEARED:
        remove_stale_temporaries(folder)
        _CLEARED.add(folder)


# ---------------------------------------------------------------- the signature of every stage
class Stage(luigi.Task):
    """Base of every task.  sig() = hash(class, version, sig_params(), the sigs of every
    required task): one generic rule, so a stage cannot forget an input.

    complete(): the output exists AND every required task is complete, recursively, so
    deleting any artifact at any depth (a Lab shard below a manifest below a GMM) reruns
    exactly what rebuilds it; a task instance remembers being found complete (Luigi shares
    instances within a process), so the walk visits each task once.  Final products (a
    trained run) and the GMM override this: once written, they no longer need their inputs."""
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
                stop_point()                  # a stop signal since the last task: leave here
                if not luigi.Task.complete(self):
                    work(self)
            cls.run = run

    def sig_params(self) -> dict:
        return {name: p.serialize(getattr(self, name)) for name, p in self.get_params()
                if p.significant and name not in self.not_in_sig}

    def sig_inputs(self) -> list:
        """What the inputs contribute to sig(): the signatures of every required task (of
        each shard, for a batch of shards: how shards are batched changes no signature)."""
        return [s for t in luigi.task.flatten(self.requires())
                for s in (t.shard_sigs() if isinstance(t, ShardBatch) else [t.sig()])]

    @once
    def sig(self) -> str:
        return signature(self.get_task_family(), version=self.version, params=self.sig_params(),
                         inputs=self.sig_inputs())

    @cached_property
    def settings(self) -> colorize:
        """[colorize] settings, read once per task instance (each read parses the config, ~0.5 ms)."""
        return colorize()

    def work_dir(self) -> Path:
        return Path(self.settings.work_dir)

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
        """on_item(i, n): i of n items done (i may advance by more than one)."""
        bar = Progress(None, desc)     # started now, so the first rate is right
        step = [0]                     # the last twentieth reported to Luigi

        def on_item(i, n):
            bar.update(i - bar.done, total=n)
            if i == n or 20 * i // max(n, 1) != step[0]:
                step[0] = 20 * i // max(n, 1)
                self.set_progress_percentage(round(100 * i / max(n, 1)))
                self.set_status_message(f"{desc}: {i}/{n}")
        return on_item


# Shards per split and stage are handed to Luigi in at most this many tasks.  Its scheduler
# walks every task of a worker for each task it hands out (get_work, count_pending), so
# scheduling grows faster than the task count: with a task per shard, 30 s outside the tasks
# for 2,007 tasks, 83 s for 4,007 (bench/many_tasks.py).  128 bounds a build at ~520 tasks
# whatever the dataset's size, and leaves ImageNet 128 tasks of ~40 shards per stage, enough
# for many workers; a dataset of up to 128 shards per split still gets a task per shard.
MAX_SHARD_TASKS = 128


class ShardBatch(Stage):
    """Base of the per-shard stages (mixed with LabParams): one Luigi task builds a batch of shards.

    Each shard's output is named by its own signature, the rule of Stage.sig applied to
    that shard alone (the stage's parameters with `shard` for the batch, and the matching
    shard's signature of a required batch), so a shard's name does not depend on which
    batch holds it.  complete() once every shard's output exists (and, as every Stage,
    what it requires is complete); run() builds the shards whose output is missing."""
    batch = luigi.Parameter(description="signature of the batch's shard list")
    shards = luigi.ListParameter(significant=False, visibility=ParameterVisibility.PRIVATE,
                                 description="signatures of the shards' files (from the split plan)")
    files = luigi.ListParameter(significant=False, visibility=ParameterVisibility.PRIVATE,
                                description="each shard's relative paths")
    stage = luigi.DictParameter(default={}, significant=False, visibility=ParameterVisibility.PRIVATE,
                                description="the split task whose shards this batch is one part of "
                                            "(family + parameters): the stage's progress line")

    @classmethod
    def of(cls, parent, plans):
        """The batch of ShardPlans `plans`, with the parameters `parent` shares."""
        return parent.clone(cls, batch=hash_strings(p.sig for p in plans), shards=[p.sig for p in plans],
                            files=[p.files for p in plans], stage=stage_of(parent))

    @once
    def shard_sigs(self) -> list:
        """The signature of each shard, in batch order."""
        params = {k: v for k, v in self.sig_params().items() if k != "batch"}
        inputs = [t.shard_sigs() if isinstance(t, ShardBatch) else [t.sig()] * len(self.shards)
                  for t in luigi.task.flatten(self.requires())]
        return [signature(self.get_task_family(), version=self.version, params={**params, "shard": shard},
                          inputs=[sigs[i] for sigs in inputs]) for i, shard in enumerate(self.shards)]

    def shard_folder(self) -> str:
        """Where the shards go: work_dir/<this>/s<size>/."""
        raise NotImplementedError

    @once
    def output(self):
        folder = self.out_dir(self.shard_folder())
        return [luigi.LocalTarget(folder / f"{sig}.h5") for sig in self.shard_sigs()]

    def stage_outputs(self) -> list:
        """The paths of every shard of this stage in the batch's split (all batches)."""
        if not self.stage:
            return [t.path for t in self.output()]
        params = dict(self.stage)
        split = luigi.task_register.Register.get_task_cls(params.pop("family")).from_str_params(params)
        return split.shard_paths()

    def run(self):
        """Build the missing shards; one progress line for the whole stage (StageProgress),
        not one per task, so ImageNet's ~10,000 shards print a few lines a minute."""
        todo = [i for i, target in enumerate(self.output()) if not target.exists()]
        paths = self.stage_outputs()
        name = f"{self.get_task_family()} {dict(self.stage).get('split', '')}".strip()
        stage = StageProgress(name, lambda: sum(os.path.exists(p) for p in paths), len(paths))
        for n, i in enumerate(todo, 1):
            stop_point()                      # between shards: a stop signal leaves here
            self.build_shard(i, self.output()[i].path, lambda j, k: None)
            line = stage.shard_done(len(self.files[i]), last=n == len(todo))
            if line:
                self.set_status_message(line)
                self.set_progress_percentage(round(100 * n / len(todo)))

    def build_shard(self, i: int, path: str, on_image) -> None:
        raise NotImplementedError


def stage_of(split_task) -> dict:
    """What ShardBatch.stage_outputs needs to find the split task again: family + parameters."""
    return {"family": split_task.get_task_family(), **split_task.to_str_params(only_significant=True)}
