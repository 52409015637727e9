"""The training configuration: one typed dataclass, saved with every run and inside every bundle.

**Task** (``classes``): the bundle's classes, in the order of the probability columns.

- ``("covid", "normal", "pneumonia")`` (default): three classes, softmax cross-entropy.
- a subset, e.g. ``("covid", "normal")``: rows of the other labels are dropped (the seeds' binary task).
- ``"rest"`` collects every label not listed: ``("covid", "rest")`` maps normal and pneumonia to ``rest``.

**Loss**: ``ce`` = softmax cross-entropy over ``len(classes)`` logits. ``bce`` = the seeds' one sigmoid output,
only for two classes. The rule for ``bce``: the single logit is the probability of the **last** class,
``classes[1]``; :meth:`covidxray.models.base.XRayNet.probabilities` returns ``[1 - p, p]``, i.e. columns in
``classes`` order, the same as for ``ce``. (Keras' ``flow_from_directory`` in the seeds sorts class folders
alphabetically, so their sigmoid was P(normal) for covid/normal -- the same rule.)

**Sampling**: ``balanced`` draws ``len(train)`` rows per epoch with replacement, every label with equal
probability and, within a label, each source in proportion to its image count to the power ``source_power``
(0.5, the square root: no collection dominates a label and none is memorised; 0: every source equally);
``shuffle`` is a plain permutation (``source_power`` must then stay 0.5). ``class_weights="auto"`` weights the loss by the inverse label frequency
*as the sampler delivers it*: with ``balanced`` the labels already arrive equally often, so the weights are 1.

**Generalisation to other hospitals** (issue #12; BENCHMARKS.md, "Generalization ablation"):
``adversary`` = ``marginal`` or ``conditional`` adds a source classifier on the penultimate features behind a
gradient-reversal layer whose lambda ramps from 0 to ``adversary_weight`` (:mod:`covidxray.training.adversary`);
``acquisition`` > 0 adds scanner-like randomisation (gamma, window, blur/sharpen, noise, JPEG, down-up sampling,
border crop/pad, corner boxes), each transform on that share of images (:mod:`covidxray.training.augment`).

**Best model**: ``model/`` holds the epoch with the highest validation macro ROC AUC; when the validation split
has a single class (AUC undefined) the lowest validation loss is used instead. Early stopping and the LR
schedule (ReduceLROnPlateau, factor 0.5) watch the same score.

**Model selection out of source** (issue #12, item 6): in-source validation rewards the shortcuts a source
leaves, so the epoch can be chosen on images of a source the run never saw instead. A run with
``holdout_source`` trains and validates without that source and without the copies of its images that other
sources hold (same duplicate group in the manifest; the Radiography Database holds 206 copies of
covid-chestxray-dataset images), and scores every image of that source after each epoch (``holdout_auc_covid`` /
``holdout_auc_macro`` in the history; never used to choose that run's own weights). ``epoch_weights`` keeps
each epoch's weights (``epochs/epoch-NNN.safetensors``) so :func:`covidxray.training.trainer.reselect_epoch` can
rebuild ``model/`` at the epoch chosen afterwards; ``select_epoch`` = N keeps epoch N (chosen on other runs'
held-out curves, e.g. by ``covidxray run``) instead of the best on validation, and ends the run there
(patience does not stop it before).

**Weight averaging** (``average_from`` = N > 0; stochastic weight averaging, Izmailov et al. 2018, whose dense
form SWAD, Cha et al. 2021, is a domain-generalisation method): ``model/`` holds the uniform average of the
weights at the end of epochs N to the last one run (``torch.optim.swa_utils.AveragedModel``; batch-norm
statistics recomputed on the training images by ``update_bn``), instead of one epoch chosen on validation or out of
source. Every epoch's weights are kept for it (as with ``epoch_weights``) and patience does not stop the run.
``average_every`` = K > 0 takes the weights every K optimizer steps of those epochs instead of at their ends
(K = 1: SWAD's dense averaging, Cha et al. 2021); the running average is part of the checkpoint, so a resumed run
gives the same model.

**COVID-19 masked for some sources** (``covid_masked_sources``, e.g. ``"kermany"``): a source that holds no
COVID-19 by construction (Kermany's children) still teaches normal against pneumonia, but its rows' loss is the
cross-entropy of the softmax over the *other* classes only (their COVID-19 logit set to -inf in the loss), so
nothing that tells such a source apart (a child's thorax) can lower p(covid): the COVID-19 logit is learnt from
the sources that hold COVID-19 and their own negatives alone. A partial-label loss: the model and its prediction
are unchanged. Validation scores those rows the same way (the figures that drive the LR schedule, early stopping
and the kept epoch); the plain validation COVID-19 AUC, what the bundle's predictions give, is recorded beside them
(``val_auc_covid_unmasked``). A fold that holds a masked source out has nothing to mask. ``covid_mask_weight`` = W < 1
makes it partial: those rows pay W x the masked loss + (1 - W) x the plain cross-entropy (validation still scores
them masked).

**Sharpness-aware minimisation** (``sam`` = rho > 0; Foret et al., ICLR 2021): each step first moves the weights
by rho along the normalised gradient (the worst nearby point to first order), takes the gradient there, and
applies it to the unmoved weights with the run's optimizer, so the run seeks a minimum whose whole neighbourhood
has low loss -- flat minima, which domain-generalisation studies link to transfer to unseen domains (Cha et al.
2021, SWAD). Twice the training compute per step; the batch-norm running statistics are updated by the first
pass only. Off (0): the step is the plain one, bit for bit.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from covidxray.preprocess import CHANNELS, Preprocessing
from covidxray.vocabulary import INITS, LABELS, REST

OPTIMIZERS = ("adam", "rmsprop", "sgd")
LOSSES = ("ce", "bce")
AUGMENTS = ("seed002", "light", "none")
CLASS_WEIGHTS = ("auto", "none")
SAMPLERS = ("balanced", "shuffle")
ADVERSARIES = ("none", "marginal", "conditional")  # source-adversarial forms: covidxray.training.adversary


class ConfigError(ValueError):
    """A training configuration that cannot work, with what was expected and what was given."""


def parse_classes(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``"covid,normal"`` or a sequence -> a validated tuple of class names."""
    items = value.split(",") if isinstance(value, str) else list(value)
    classes = tuple(c.strip().lower() for c in items if c.strip())
    unknown = [c for c in classes if c not in (*LABELS, REST)]
    if unknown:
        raise ConfigError(
            f"unknown class name(s) {unknown}: classes are taken from {list(LABELS)} plus '{REST}' "
            "(every label not listed), e.g. --classes covid,normal,pneumonia or covid,rest"
        )
    if len(set(classes)) != len(classes):
        raise ConfigError(f"classes {list(classes)} repeat a name")
    if len(classes) < 2:
        raise ConfigError(f"a task needs at least two classes, got {list(classes)}")
    if REST in classes and set(classes) >= {*LABELS, REST}:
        raise ConfigError(f"'{REST}' would be empty: every label is already listed in {list(classes)}")
    return classes


@dataclass
class TrainConfig:
    """Everything that defines a training run (see the module docstring for the task/loss/sampling rules)."""

    manifest: str = ""
    model: str = "seed_cnn6"
    out: str = "runs/seed_cnn6"
    epochs: int = 15
    image_size: int = 128
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adam"
    loss: str = "ce"
    classes: tuple[str, ...] = LABELS
    augment: str = "light"
    class_weights: str = "auto"
    sampler: str = "balanced"
    source_power: float = 0.5  # balanced sampler: a source's share within a label ~ its image count ** this
    seed: int = 0
    workers: int = 0
    weights: str | None = None
    freeze_backbone: bool = False
    init: str = "default"  # weight initialisation: default | glorot | he (covidxray.models.init)
    patience: int = 5
    intensity: str = "equalize"
    resize: str = "squash"
    channels: int = 1
    lungcrop_margin: float = 0.1  # resize lungcrop / lungmask: the lung box widened by this share of its size
    holdout_source: str | None = None
    cache_dir: str = "runs/cache"
    max_minutes: float | None = None
    progress: bool = True
    checkpoint_every: int = 50  # optimizer steps between mid-epoch checkpoints (0: at epoch ends only)
    threads: int | None = None  # torch threads; None: OMP_NUM_THREADS if set, else 2
    epoch_samples: int = (
        0  # images drawn per epoch (0: as many as the train split has); for slow models on CPU
    )
    adversary: str = "none"  # source adversary behind gradient reversal: none | marginal | conditional
    adversary_weight: float = 0.5  # the reversal's final lambda (DANN schedule from 0), see .adversary
    acquisition: float = (
        0.0  # acquisition randomisation: chance of each scanner-like transform (0: off), .augment
    )
    # model selection out of source (issue #12): keep every epoch's weights, so the epoch can be chosen
    # afterwards on the held-out source's figures; or keep a given epoch instead of the best on validation
    epoch_weights: bool = False
    select_epoch: int = 0
    mixup: float = 0.0  # mixup: Beta(alpha, alpha) blends of image pairs and of their losses (0: off)
    average_from: int = 0  # weight averaging: model/ = mean of the weights of epochs N..last (0: off)
    average_every: int = 0  # with average_from: average every N optimizer steps instead (0: epoch ends), SWAD
    label_smoothing: float = 0.0  # share of each training target spread evenly over the classes (0: off)
    weight_decay: float = 0.0  # adam: decoupled decay (AdamW); rmsprop / sgd: an L2 term; 0: off
    group_dro: float = 0.0  # GroupDRO step size over the (source, class) groups (0: off), .groupdro
    # holdout_source: score the held-out source once at the end instead of after every epoch (a model slow at
    # inference); the weights are the same, only the per-epoch holdout columns of the history are missing
    holdout_final_only: bool = False
    # comma-separated sources that hold no COVID-19 by construction (e.g. kermany): their images train only the
    # choice among the other classes (the COVID-19 logit masked out of their loss), .trainer.covid_mask
    covid_masked_sources: str = ""
    # the masked loss's share for those rows (1: all of it; W < 1: W x masked + (1 - W) x plain cross-entropy)
    covid_mask_weight: float = 1.0
    erasing: float = 0.0  # random erasing: chance of one noise-filled box per image (0: off), .augment
    sam: float = 0.0  # sharpness-aware minimisation: the weight perturbation's radius rho (0: off), .trainer

    def __post_init__(self) -> None:
        self.classes = parse_classes(self.classes)
        self.covid_masked_sources = ",".join(masked_sources(self.covid_masked_sources))
        self.validate()
        self.source_power = float(self.source_power)
        self.label_smoothing, self.weight_decay = float(self.label_smoothing), float(self.weight_decay)
        self.group_dro = float(self.group_dro)
        self.sam = float(self.sam)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first field that cannot work."""
        for name, allowed in (
            ("optimizer", OPTIMIZERS),
            ("loss", LOSSES),
            ("augment", AUGMENTS),
            ("class_weights", CLASS_WEIGHTS),
            ("sampler", SAMPLERS),
            ("init", INITS),
            ("adversary", ADVERSARIES),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if self.loss == "bce" and len(self.classes) != 2:
            raise ConfigError(
                f"loss 'bce' (one sigmoid output) needs exactly two classes, got {list(self.classes)}; "
                "use --loss ce for more"
            )
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.epoch_samples < 0:
            raise ConfigError(f"epoch_samples must not be negative, got {self.epoch_samples}")
        if self.workers < 0 or self.patience < 0 or self.checkpoint_every < 0 or (self.threads or 0) < 0:
            raise ConfigError("workers, patience, checkpoint_every and threads must not be negative")
        if self.adversary_weight < 0:
            raise ConfigError(f"adversary_weight must not be negative, got {self.adversary_weight}")
        for name in ("acquisition", "erasing"):
            v = getattr(self, name)
            if not _is_number(v) or not 0 <= v <= 1:
                raise ConfigError(f"{name} is a probability in [0, 1], got {v!r}")
        if self.holdout_final_only and not self.holdout_source:
            raise ConfigError(
                "holdout_final_only changes when a held-out source is scored, but no holdout_source is set: "
                "give --holdout-source SOURCE or drop --holdout-final-only"
            )
        if not _is_number(self.source_power) or not 0.0 <= self.source_power <= 1.0:
            raise ConfigError(
                f"source_power must lie in [0, 1] (0: every source of a label equally often, 0.5: square root "
                f"of its image count, 1: in proportion to it), got {self.source_power!r}"
            )
        if self.source_power != 0.5 and self.sampler != "balanced":
            raise ConfigError(
                f"source_power {self.source_power} sets the balanced sampler's source shares; sampler "
                f"{self.sampler!r} draws no shares: use --sampler balanced or leave source_power at 0.5"
            )
        for name, top in (("label_smoothing", 1.0), ("weight_decay", 1.0)):
            v = getattr(self, name)
            if not _is_number(v) or not 0.0 <= v < top:
                raise ConfigError(f"{name} must be a number in [0, {top:g}), got {v!r}")
        if not _is_number(self.group_dro) or not 0.0 <= self.group_dro <= 10.0:
            raise ConfigError(
                f"group_dro is GroupDRO's step size, a number in [0, 10] (0: off; the paper used 0.01), "
                f"got {self.group_dro!r}"
            )
        if self.group_dro and self.mixup:
            raise ConfigError(
                "group_dro and mixup cannot be combined (a blended image belongs to two groups)"
            )
        if not _is_number(self.sam) or not 0.0 <= self.sam <= 1.0:
            raise ConfigError(
                f"sam is the radius rho of sharpness-aware minimisation's weight perturbation, a number in "
                f"[0, 1] (0: off; 0.05 in the paper), got {self.sam!r}"
            )
        if self.sam and (self.adversary != "none" or self.group_dro):
            raise ConfigError(
                "sam cannot be combined with a source adversary or group_dro (each step's second, perturbed "
                "pass would update their state a second time): drop one of them"
            )
        if (  # before the masked sources' checks compare it
            isinstance(self.covid_mask_weight, bool)
            or not isinstance(self.covid_mask_weight, int | float)
            or not 0 < self.covid_mask_weight <= 1
        ):
            raise ConfigError(
                "covid_mask_weight is the masked loss's share for the rows of covid_masked_sources, in (0, 1] "
                f"(1: the COVID-19 logit wholly masked), got {self.covid_mask_weight!r}"
            )
        self.covid_mask_weight = float(self.covid_mask_weight)
        if masked_sources(self.covid_masked_sources):
            problem = ""
            if "covid" not in self.classes or len(self.classes) < 3:  # (loss bce, one output, needs two)
                problem = (
                    f"masks COVID-19 among at least three classes, got classes {list(self.classes)}: use "
                    "--classes covid,normal,pneumonia"
                )
            elif self.label_smoothing:
                problem = (
                    "cannot be combined with label_smoothing (it would spread target onto the masked class): "
                    "drop one of them"
                )
            elif self.mixup:
                problem = "cannot be combined with mixup (a blended image has two sources): drop one of them"
            elif self.covid_mask_weight < 1 and self.group_dro:
                problem = (
                    f"with covid_mask_weight {self.covid_mask_weight} cannot be combined with group_dro (its group "
                    "weights would be updated by both losses): use covid_mask_weight 1 or drop group_dro"
                )
            if problem:
                raise ConfigError(f"covid_masked_sources {self.covid_masked_sources!r} {problem}")
        if self.covid_mask_weight < 1 and not masked_sources(self.covid_masked_sources):
            raise ConfigError(
                f"covid_mask_weight {self.covid_mask_weight} weights the masked loss of covid_masked_sources, but "
                "none is given: add --covid-masked-sources (e.g. kermany)"
            )
        if self.mixup < 0:
            raise ConfigError(f"mixup is a Beta distribution's alpha, >= 0 (0: off), got {self.mixup}")
        if self.mixup and self.adversary != "none":
            raise ConfigError(
                "mixup and a source adversary cannot be combined (a blended image has no one source)"
            )
        if self.select_epoch < 0:
            raise ConfigError(
                f"select_epoch must not be negative (0: best on validation), got {self.select_epoch}"
            )
        if self.select_epoch > self.epochs:
            raise ConfigError(
                f"select_epoch {self.select_epoch} is after the last epoch ({self.epochs}): raise --epochs"
            )
        if self.average_from < 0:
            raise ConfigError(f"average_from must not be negative (0: no averaging), got {self.average_from}")
        if (
            not isinstance(self.average_every, int)
            or isinstance(self.average_every, bool)
            or self.average_every < 0
        ):
            raise ConfigError(
                "average_every is a whole number of optimizer steps, >= 0 (0: the weights at epoch ends), got "
                f"{self.average_every!r}"
            )
        if self.average_every and not self.average_from:
            raise ConfigError(
                f"average_every {self.average_every} sets how often weight averaging takes the weights, but "
                "average_from is 0 (no averaging): give --average-from N too"
            )
        last = self.select_epoch or self.epochs
        if self.average_from > last:
            raise ConfigError(
                f"average_from {self.average_from} is after the last epoch the run keeps ({last}): "
                "lower --average-from or raise --epochs"
            )
        try:  # the preprocessing's own bound on the margin
            Preprocessing(lungcrop_margin=self.lungcrop_margin)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.channels not in CHANNELS:
            raise ConfigError(f"channels must be one of {list(CHANNELS)}, got {self.channels}")

    @property
    def num_outputs(self) -> int:
        """Network outputs: 1 for the sigmoid (bce) task, else one logit per class."""
        return 1 if self.loss == "bce" else len(self.classes)

    def preprocessing(self):
        """The :class:`covidxray.preprocess.Preprocessing` this run trains with (and its bundle stores)."""
        segmenter = ""
        if self.resize in ("lungcrop", "lungmask"):  # the crops depend on the segmenter: record which one
            from covidxray.segmentation.segmenter import default_segmenter_version

            segmenter = default_segmenter_version()
        return Preprocessing(
            image_size=self.image_size,
            channels=self.channels,
            resize=self.resize,
            intensity=self.intensity,
            lungcrop_margin=self.lungcrop_margin,
            lung_segmenter=segmenter,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["classes"] = list(self.classes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a dict (e.g. a saved ``run.json``); unknown keys are rejected by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown training option(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        """Read a YAML or JSON file of options (the keys of :class:`TrainConfig`)."""
        return cls.from_dict(read_options(path))


def masked_sources(value: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """``covid_masked_sources`` as a tuple of source names (``"kermany"``, ``"a, b"`` or a sequence)."""
    if not value:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(dict.fromkeys(str(c).strip() for c in items if str(c).strip()))


def _is_number(v: Any) -> bool:
    """An int or float option value (a bool is not one, though Python counts it as an int)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# each option's type without "| None" ("float" for max_minutes): the CLI types its flags by it, YAML files are
# read by it
OPTION_TYPES: dict[str, str] = {f.name: str(f.type).split(" |")[0] for f in fields(TrainConfig)}


def read_options(path: str | Path) -> dict[str, Any]:
    """The mapping of training options in a YAML or JSON file, as written (not yet validated)."""
    p = Path(path)
    text = p.read_text()
    if p.suffix.lower() in (".yaml", ".yml"):
        import yaml

        d = yaml.safe_load(text) or {}
        if isinstance(d, dict):
            d = _yaml_floats(d)
    else:
        d = json.loads(text)
    if not isinstance(d, dict):
        raise ConfigError(f"{p}: expected a mapping of training options, got {type(d).__name__}")
    return d


def _yaml_floats(d: dict[str, Any]) -> dict[str, Any]:
    """YAML 1.1 (PyYAML) reads ``1e-4`` (no dot) as text: a float option's value that reads as a number becomes
    that number, so ``lr: 1e-4`` means what it says."""
    out = dict(d)
    for name in d:
        if OPTION_TYPES.get(name) == "float" and isinstance(d[name], str):
            try:
                out[name] = float(d[name])
            except ValueError:
                pass  # left as text: validation names the field
    return out
