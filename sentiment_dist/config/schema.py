"""The config schema: one dataclass per config group, registered with Hydra's ConfigStore.

Every option file of a group starts from its schema (`defaults: [schema]`),
so Hydra refuses, while it composes and before any data is read:

- a key the schema does not have (`trainer.epoch=3`: "Key 'epoch' not in 'TrainerConfig'");
- a value of the wrong type (`trainer.epochs=abc`);
- a choice outside its enum (`model.pooling=avg`: "Invalid value 'avg', expected one of [...]").

Ranges are declared beside the fields (`positive()`, `fraction()`, ...) and
checked by `check_ranges` on the composed config, also before anything runs:
`trainer.batch_size=0` fails in one sentence naming the key.

Choices are `StrEnum`s: a value compares equal to its string
(`cfg.model.pooling == "max"`) and prints as it, so code and saved configs
read plain strings.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from sentiment_dist.runtime.errors import UserError

# -- ranges ----------------------------------------------------------------------


def _field(default: Any, rule: str, test, **kwargs) -> Any:
    if isinstance(default, list | dict):
        return field(default_factory=lambda: default, metadata={"rule": rule, "test": test}, **kwargs)
    return field(default=default, metadata={"rule": rule, "test": test}, **kwargs)


def positive(default: Any = MISSING) -> Any:
    """Greater than 0 (sizes, epochs, rates); null passes where the type allows it."""
    return _field(default, "must be greater than 0", lambda v: v > 0 and math.isfinite(v))


def at_least(low: float, default: Any = MISSING) -> Any:
    return _field(default, f"must be at least {low:g}", lambda v: v >= low and math.isfinite(v))


def fraction(default: Any = MISSING, *, closed_low: bool = True) -> Any:
    """A share in [0, 1) (or (0, 1) with closed_low=False: momenta, factors)."""
    if closed_low:
        return _field(default, "must be in [0, 1)", lambda v: 0 <= v < 1)
    return _field(default, "must be between 0 and 1 (exclusive)", lambda v: 0 < v < 1)


def never_null(default: Any, why: str) -> Any:
    """A value that must not be null. Typed Optional so that a null reaches `check_ranges` and is
    refused in this project's sentence and exit code, not in the type checker's words."""
    return field(default=default, metadata={"when_null": why})


def between(low: float, high: float, default: Any = MISSING) -> Any:
    return _field(default, f"must be between {low:g} and {high:g}", lambda v: low <= v <= high)


def one_of(values: tuple, default: Any = MISSING) -> Any:
    return _field(default, f"must be one of {', '.join(map(str, values))}", lambda v: v in values)


def report_sizes(default: list) -> Any:
    return _field(default, "must list numbers of labelled examples of at least 8 (or 'all')",
                  lambda sizes: len(sizes) > 0 and all(s == "all" or (isinstance(s, int) and s >= 8) for s in sizes))


# -- choices ---------------------------------------------------------------------


class ModelName(StrEnum):
    lstm = "lstm"
    bilstm = "bilstm"
    stacked_lstm = "stacked_lstm"
    attention_lstm = "attention_lstm"


class Pooling(StrEnum):
    last = "last"
    max = "max"
    mean = "mean"
    max_mean = "max_mean"
    attention = "attention"


class OptimizerName(StrEnum):
    adam = "adam"
    adamw = "adamw"
    sgd = "sgd"
    rmsprop = "rmsprop"


class LrScaling(StrEnum):
    none = "none"
    linear = "linear"
    sqrt = "sqrt"


class Precision(StrEnum):
    float32 = "float32"
    mixed_float16 = "mixed_float16"
    mixed_bfloat16 = "mixed_bfloat16"


class ClassWeight(StrEnum):
    balanced = "balanced"


class Schedule(StrEnum):
    frozen = "frozen"  # the head only
    full = "full"  # every group from the first epoch
    gradual = "gradual"  # ULMFiT: one more group per epoch, from the top


class Group(StrEnum):
    embedding = "embedding"
    encoder = "encoder"
    head = "head"


class Head(StrEnum):
    auto = "auto"
    reuse = "reuse"
    new = "new"


class Vocabulary(StrEnum):
    source = "source"
    extend = "extend"


class AugmentOperation(StrEnum):
    synonym = "synonym"
    insert = "insert"
    swap = "swap"
    delete = "delete"


class ReportHelper(StrEnum):
    augment = "augment"  # finetune/augment on the N examples
    class_weight = "class_weight"  # scikit-learn's balanced class weights
    threshold = "threshold"  # the decision threshold chosen on validation macro-F1 (binary)
    l2_sp = "l2_sp"  # finetune.l2_sp=report.l2_sp: weights pulled toward the source's
    tfidf = "tfidf"  # probabilities averaged with source + target TF-IDF's, the weight chosen on validation
    lm_adapt = "lm_adapt"  # ULMFiT stage 2: the source's encoder first trained as a language model on the target's texts


class StrategyName(StrEnum):
    single = "single"
    mirrored = "mirrored"
    multiworker = "multiworker"
    horovod = "horovod"


class CrossDeviceOps(StrEnum):
    nccl = "nccl"
    hierarchical_copy = "hierarchical_copy"
    reduction_to_one_device = "reduction_to_one_device"


class ClusterResolver(StrEnum):
    tf_config = "tf_config"
    slurm = "slurm"


# Functional form: `global` is a keyword, and OmegaConf looks choices up by name.
ElasticBatch = StrEnum("ElasticBatch", {"global": "global", "per_worker": "per_worker"})


class Communication(StrEnum):
    auto = "auto"
    ring = "ring"
    nccl = "nccl"


class Objective(StrEnum):
    """What a hyper-parameter sweep optimises: a metric of the validation split, never the test set's."""

    val_macro_f1 = "val_macro_f1"
    val_accuracy = "val_accuracy"
    val_loss = "val_loss"
    val_perplexity = "val_perplexity"  # pretrain


class WandbMode(StrEnum):
    online = "online"
    offline = "offline"
    disabled = "disabled"


class Domain(StrEnum):
    movies = "movies"
    ecommerce = "ecommerce"


class FileFormat(StrEnum):
    csv = "csv"
    tsv = "tsv"
    jsonl = "jsonl"
    parquet = "parquet"


class DatasetSource(StrEnum):
    synthetic = "synthetic"
    files = "files"
    imdb = "imdb"
    text = "text"
    mixture = "mixture"


class MappingType(StrEnum):
    names = "names"
    integers = "integers"
    ratings = "ratings"


# -- groups ------------------------------------------------------------------------


@dataclass
class ModelConfig:
    name: ModelName = MISSING
    vocab_size: int = at_least(3, 20000)  # padding, [UNK] and one token
    sequence_length: int = positive(200)
    embedding_dim: int = positive(128)
    units: int = positive(64)
    num_layers: int = positive(1)
    bidirectional: bool = False
    pooling: Pooling = Pooling.last
    attention_units: int = positive(64)
    dropout: float = fraction(0.2)
    embedding_dropout: float = fraction(0.0)
    recurrent_dropout: float = fraction(0.0)
    head_units: int = at_least(0, 0)
    l2: float = at_least(0, 0.0)


@dataclass
class EarlyStoppingConfig:
    monitor: str = "val_loss"
    patience: int | None = at_least(0, 2)  # null = off
    min_delta: float = at_least(0, 0.0)


@dataclass
class LrOnPlateauConfig:
    monitor: str = "val_loss"
    patience: int | None = at_least(0, 1)  # null = off
    factor: float = fraction(0.5, closed_low=False)
    min_lr: float = at_least(0, 1e-5)


@dataclass
class TrainerConfig:
    epochs: int = positive(5)
    batch_size: int = positive(64)
    batch_by_length: bool = False
    optimizer: OptimizerName = OptimizerName.adam
    learning_rate: float = positive(0.001)
    lr_scaling: LrScaling = LrScaling.none
    warmup_epochs: float = at_least(0, 0.0)
    momentum: float = fraction(0.0)
    weight_decay: float = at_least(0, 0.004)
    gradient_clip_norm: float | None = positive(1.0)
    class_weight: ClassWeight | None = None
    # Binary classifiers: choose the decision threshold on P(positive) that maximises validation
    # macro-F1 (instead of 0.5); saved with the model, so predict and evaluate use it too.
    tune_threshold: bool = False
    precision: Precision = Precision.float32
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    lr_on_plateau: LrOnPlateauConfig = field(default_factory=LrOnPlateauConfig)
    best_monitor: str = "val_loss"
    ema_momentum: float | None = fraction(None, closed_low=False)
    resume: bool = True
    verbose: bool = True
    deterministic: bool = False
    # Stop after this many training steps in all (mid-epoch: that epoch is validated and ends the
    # run): smoke runs, and benchmarks over corpora whose epoch would take hours. null: every epoch.
    max_steps: int | None = positive(None)


@dataclass
class StrategyConfig:
    name: StrategyName = StrategyName.single


@dataclass
class MirroredConfig(StrategyConfig):
    cpu_devices: int = at_least(0, 0)
    cross_device_ops: CrossDeviceOps = CrossDeviceOps.nccl


@dataclass
class MultiWorkerConfig(StrategyConfig):
    cluster_resolver: ClusterResolver = ClusterResolver.tf_config
    # slurm: worker ports are this + SLURM_JOB_ID % 10000 (+ the task's index on its node)
    slurm_port_base: int = between(1024, 55535, 15000)
    communication: Communication = Communication.auto


@dataclass
class HorovodConfig(StrategyConfig):
    elastic: bool = False  # hvd.elastic: workers may leave and join (horovodrun --min-np/--max-np)
    commit_steps: int = positive(20)  # elastic: commit the state every N steps (a lost worker costs at most N)
    elastic_batch: ElasticBatch = ElasticBatch["global"]  # elastic: what a change of workers keeps


@dataclass
class LoggerConfig:
    name: str = "none"


@dataclass
class WandbConfig(LoggerConfig):
    project: str = "sentiment-dist"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    name_: str | None = None
    notes: str | None = None
    mode: WandbMode | None = None
    init_timeout: float = positive(60.0)
    log_model: bool = True


@dataclass
class PathsConfig:
    log_dir: str = "outputs"
    # Where `dataset.prepared=auto` keeps the stores it prepares (and `prepare` writes by default),
    # each named by the dataset and a hash of what it holds: a second job reuses the first's.
    prepared_dir: str = "${paths.log_dir}/prepared"


@dataclass
class PrepareConfig:
    """How `python -m sentiment_dist.prepare` (and `dataset.prepared=auto`) tokenize a dataset once."""

    workers: int = positive(2)  # tokenizing processes (1: in the reading process itself)
    out: str | None = None  # the store's directory (default: in paths.prepared_dir, named by its content)
    # false: texts only, for language-model pretraining (a mixture keeps its sources' classes otherwise)
    labels: bool = True
    # Tokenize against a given vocabulary, a fine-tune's source: a run dir (its vocabulary.txt) or a
    # vocabulary file; null: built from the training split (model.vocab_size at most).
    vocabulary: str | None = None
    extend_max_tokens: int = at_least(0, 0)  # with `vocabulary`: add up to this many new training words


@dataclass
class SearchConfig:
    """A run as a trial of a hyper-parameter sweep (`-m hparams_search=...`, sentiment_dist/config/search.py).

    `trial_launcher` starts each trial as its own multi-process job (the command's words before
    `python -m ...`, e.g. `[horovodrun, -np, "2", -H, "localhost:2"]`): only a sweep uses it."""

    objective: Objective = Objective.val_macro_f1
    trial_launcher: list[str] | None = None


@dataclass
class GroupRates:
    """Each layer group's learning rate = trainer.learning_rate x this (discriminative rates)."""

    embedding: float = positive(1.0)
    encoder: float = positive(1.0)
    head: float = positive(1.0)


# `init.from` names a pretrain run to start the embedding and encoder from. `from` is a
# Python keyword, so this schema is built from a namespace; without __init__, __repr__ and
# __eq__, which dataclasses would write with `self.from` in them (OmegaConf needs none).
InitConfig = dataclass(init=False, repr=False, eq=False)(type("InitConfig", (), {
    "__module__": __name__,
    "__doc__": "Start from a pretrain run: {from: <run dir>, vocab: source | extend, extend_max_tokens}.",
    "__annotations__": {"from": str | None, "vocab": Vocabulary, "extend_max_tokens": int},
    "from": None, "vocab": Vocabulary.source, "extend_max_tokens": positive(5000),
}))  # fmt: skip


@dataclass
class AugmentConfig:
    """EDA over the source embedding's neighbours (sentiment_dist/data/augment.py)."""

    copies: int = at_least(0, 0)  # altered copies of each labelled target text; 0 = off
    operations: list[AugmentOperation] = field(default_factory=lambda: list(AugmentOperation))
    rate: float = fraction(0.1, closed_low=False)  # share of a text's words each operation changes
    neighbours: int = positive(5)  # a word's nearest embedding neighbours to choose from
    min_similarity: float = fraction(0.4)  # cosine similarity a neighbour needs
    seed: int | None = never_null(0, "every rank of a distributed job must make the same copies; set an integer seed")


@dataclass
class FinetuneConfig:
    source: str | None = None
    expect_model: ModelName | None = None
    vocab: Vocabulary = Vocabulary.source
    extend_max_tokens: int = positive(5000)
    head: Head = Head.auto
    schedule: Schedule = Schedule.gradual
    freeze: list[Group] = field(default_factory=list)
    lr_multipliers: GroupRates = field(default_factory=GroupRates)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # The source's weights compete with the fine-tuned ones on validation (trainer.best_monitor), and win ties.
    guard: bool = True
    # WiSE-FT: also the interpolations (1 - a) source + a fine-tuned at these a (strictly between 0 and 1).
    wise_ft_alphas: list[float] = field(default_factory=list)
    # L2-SP: pull every weight taken from the source toward its source value by l2_sp / 2 * ||w - w_source||^2.
    l2_sp: float = at_least(0, 0.0)


@dataclass
class LanguageModelConfig:
    num_sampled: int | None = positive(1024)
    whole_texts: bool = True
    eval_texts: int | None = positive(2000)
    lr_multipliers: GroupRates | None = None
    adapt: bool = True
    trainer: TrainerConfig | None = None  # the language-model stages of ulmfit / transfer_report


@dataclass
class ReportConfig:
    sizes: list[Any] = report_sizes([50, 100, 250, "all"])
    repeats: int = positive(3)
    schedules: list[Schedule] = _field([Schedule.frozen, Schedule.full, Schedule.gradual],
                                       "must name at least one fine-tuning schedule (frozen, full, gradual)",
                                       lambda schedules: len(schedules) > 0)
    scratch_epochs: int = positive(15)
    finetune_epochs: int = positive(8)
    lm_schedules: list[Schedule] = field(default_factory=list)
    # The small-N helpers, each alone on the first schedule, for N up to helpers_max_size.
    helpers: list[ReportHelper] = field(default_factory=lambda: list(ReportHelper))
    helpers_max_size: int = positive(250)
    # Every method's validation split (early stopping, C, thresholds): a seeded, stratified sample of
    # at most this many target validation examples (null: all of them), so a large target stays cheap.
    validation_size: int | None = positive(2000)
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(copies=4))
    l2_sp: float = positive(0.01)  # the l2_sp helper's strength
    # The interpolations the first schedule's `:wise_ft` row compares (free: the same trained weights),
    # when finetune.wise_ft_alphas is empty.
    wise_ft_alphas: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])


@dataclass
class SplitConfig:
    validation_fraction: float = fraction(0.1)
    test_fraction: float = fraction(0.2)
    seed: int = 42


@dataclass
class DatasetConfig:
    name: str = MISSING
    source: DatasetSource = MISSING
    max_rows: int | None = positive(None)  # at most this many rows (a seeded sample), for quick runs
    # null: read and tokenize in memory (fastest for small data); a directory written by
    # `python -m sentiment_dist.prepare`, which every rank memory-maps; `auto`: prepare once into
    # paths.prepared_dir (the chief) and reuse it after.
    prepared: str | None = None


@dataclass
class SyntheticDataset(DatasetConfig):
    source: DatasetSource = DatasetSource.synthetic
    domain: Domain = Domain.movies
    num_classes: int = one_of((2, 3, 5), 2)
    num_train: int = positive(4000)
    num_validation: int = positive(500)
    num_test: int = positive(1000)
    seed: int = at_least(0, 1234)


@dataclass
class LabelMapping:
    type: MappingType = MappingType.names
    classes: Any = None
    drop_unknown: bool = False


@dataclass
class TextColumns:
    path: str | None = None
    format: FileFormat | None = None
    encoding: str = "utf-8"
    text_columns: list[str] = field(default_factory=lambda: ["text"])
    optional_text_columns: list[str] = field(default_factory=list)
    text_separator: str = ". "


@dataclass
class FilesDataset(TextColumns, DatasetConfig):
    source: DatasetSource = DatasetSource.files
    train_path: str | None = None
    validation_path: str | None = None
    test_path: str | None = None
    label_column: str = "label"
    label_mapping: LabelMapping = field(default_factory=LabelMapping)
    split: SplitConfig = field(default_factory=SplitConfig)


@dataclass
class ImdbDataset(DatasetConfig):
    source: DatasetSource = DatasetSource.imdb
    path: str | None = None
    split: SplitConfig = field(default_factory=lambda: SplitConfig(test_fraction=0.5))


@dataclass
class TextDataset(TextColumns, DatasetConfig):
    source: DatasetSource = DatasetSource.text
    split: SplitConfig = field(default_factory=lambda: SplitConfig(validation_fraction=0.05, test_fraction=0.05))


@dataclass
class MixtureSource:
    dataset: Any = MISSING  # a dataset config: any source but another mixture
    # This source's share of the mixture's training examples, relative to the others'; null for every
    # source: each source's training split whole (the union, e.g. the texts of a language model).
    weight: float | None = positive(1.0)


@dataclass
class MixtureDataset(DatasetConfig):
    """Several datasets as one: each source's labels are mapped to `classes` by its own
    label_mapping, and each contributes `weight / sum of weights` of `size` training examples
    (`max_rows` caps every source, as it caps one dataset)."""

    source: DatasetSource = DatasetSource.mixture
    sources: dict[str, MixtureSource] = field(default_factory=dict)
    classes: list[str] | None = None  # the mixture's classes, in order; null = the first source's
    size: int | None = positive(None)  # training examples in all; null = every source's training split in all
    seed: int = 42  # which examples are drawn (and which repeat, for a source oversampled)


# -- tasks (the primary configs) -----------------------------------------------------


@dataclass
class TaskConfig:
    task_name: str = MISSING
    seed: int = 42
    tags: list[str] = field(default_factory=list)
    strategy: Any = MISSING
    logger: Any = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)


@dataclass
class TrainTask(TaskConfig):
    dataset: Any = MISSING
    model: ModelConfig = MISSING
    trainer: TrainerConfig = MISSING
    init: Any = MISSING  # InitConfig
    search: SearchConfig = field(default_factory=SearchConfig)


@dataclass
class PretrainTask(TrainTask):
    lm: LanguageModelConfig = field(default_factory=LanguageModelConfig)


@dataclass
class SourceConfig:
    """The source model trained in a fine-tune job when finetune.source is null (its model: `model`)."""

    dataset: Any = MISSING
    trainer: TrainerConfig = MISSING


@dataclass
class FinetuneTask(TrainTask):
    finetune: FinetuneConfig = MISSING
    source: SourceConfig = field(default_factory=SourceConfig)


@dataclass
class GeneralConfig:
    dataset: Any = MISSING  # the general corpus of ulmfit's first language model (labels ignored)


@dataclass
class UlmfitTask(TrainTask):
    finetune: FinetuneConfig = MISSING
    lm: LanguageModelConfig = MISSING
    general: GeneralConfig = field(default_factory=GeneralConfig)


@dataclass
class TransferReportTask(FinetuneTask):
    lm: LanguageModelConfig = MISSING
    report: ReportConfig = field(default_factory=ReportConfig)


@dataclass
class PrepareTask(TaskConfig):
    dataset: Any = MISSING
    model: ModelConfig = MISSING  # its vocab_size, when the vocabulary is built from the data
    strategy: Any = None
    logger: Any = None


@dataclass
class EvaluateTask(TaskConfig):
    run_dir: str = MISSING
    batch_size: int = positive(256)
    dataset: Any = None  # null: the run's own dataset
    logger: Any = None


def register() -> None:
    """Put every schema in Hydra's ConfigStore (idempotent)."""
    store = ConfigStore.instance()
    for group, name, node in (
        ("model", "schema", ModelConfig),
        ("trainer", "schema", TrainerConfig),
        ("strategy", "schema", StrategyConfig),
        ("strategy", "schema_mirrored", MirroredConfig),
        ("strategy", "schema_multiworker", MultiWorkerConfig),
        ("strategy", "schema_horovod", HorovodConfig),
        ("logger", "schema", LoggerConfig),
        ("logger", "schema_wandb", WandbConfig),
        ("paths", "schema", PathsConfig),
        ("init", "schema", InitConfig),
        ("finetune", "schema", FinetuneConfig),
        ("finetune/augment", "schema", AugmentConfig),
        ("lm", "schema", LanguageModelConfig),
        ("report", "schema", ReportConfig),
        ("dataset", "schema_synthetic", SyntheticDataset),
        ("dataset", "schema_files", FilesDataset),
        ("dataset", "schema_imdb", ImdbDataset),
        ("dataset", "schema_text", TextDataset),
        ("dataset", "schema_mixture", MixtureDataset),
        (None, "schema_train", TrainTask),
        (None, "schema_pretrain", PretrainTask),
        (None, "schema_finetune", FinetuneTask),
        (None, "schema_ulmfit", UlmfitTask),
        (None, "schema_transfer_report", TransferReportTask),
        (None, "schema_evaluate", EvaluateTask),
        (None, "schema_prepare", PrepareTask),
    ):
        store.store(group=group, name=name, node=node)


# -- range checks -----------------------------------------------------------------


def check_ranges(cfg: DictConfig) -> None:
    """Refuse, in one sentence naming the key, the first value outside its declared range."""
    _check_node(cfg, "")


def _check_node(node: Any, prefix: str) -> None:
    if isinstance(node, ListConfig):
        for index, item in enumerate(node):
            _check_node(item, f"{prefix}[{index}]")
        return
    if not isinstance(node, DictConfig) or node._is_none() or node._is_missing():
        return
    schema = OmegaConf.get_type(node)
    rules = {f.name: f.metadata for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else {}
    for key in node:
        path = f"{prefix}{key}"
        if OmegaConf.is_missing(node, key):
            continue
        value = node[key]
        rule = rules.get(key, {})
        if value is None and "when_null" in rule:
            raise UserError(f"{path}=null: {rule['when_null']}.")
        if "test" in rule and value is not None and not isinstance(value, bool):
            plain = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value
            if not rule["test"](plain):
                raise UserError(f"{path}={plain!r} {rule['rule']}; set it in range.")
        if isinstance(value, DictConfig | ListConfig):
            _check_node(value, path + ".")
