"""Typed configuration of the pretraining half: the schema every YAML group under `configs/` is checked against.

The front door (`webly.config`) composes these with Hydra; the dataclasses here are what makes an unknown key
or a value of the wrong type fail before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SynthConfig:
    """The synthetic web: a world of concepts and a noisy, tagged corpus drawn from it."""

    seed: int = 0
    num_images: int = 2000  # training corpus size (all nested subsets together)
    heldout_images: int = 200  # a separate held-out shard set for precision@1 / mAP
    image_size: int = 64  # side of the square corpus images, pixels
    num_concepts: int = 40  # visual concepts (shape x colour x texture combinations)
    max_objects: int = 4  # objects per image: 1..max_objects
    recall: float = 0.7  # probability that a present concept's name (or a synonym) is tagged
    synonym_rate: float = 0.3  # probability that a tagged concept uses a synonym instead of its name
    noise: float = 0.2  # target fraction of tags that are random noise (JFT reports ~20%)
    attribute_rate: float = 0.3  # probability of tagging a present object's colour / shape / texture word
    meta_rate: float = 0.5  # expected number of YFCC-like meta tags (camera, year, place) per image
    zipf: float = 1.0  # exponent of the Zipf law over concept frequencies
    jpeg_quality: int = 90


@dataclass
class VocabConfig:
    min_count: int = 2  # tags seen fewer times go out of vocabulary
    top_k: int = 0  # keep only the K most frequent tags; 0 keeps all that pass min_count
    max_tracked: int = 0  # count at most this many distinct tags (bounded memory, Misra-Gries); 0: exact
    synonyms: str = ""  # a file of `variant<TAB>canonical` lines: variants count and encode as the canonical tag
    oov: str = "drop"  # out-of-vocabulary tags: drop | bucket (one shared `<oov>` target)


@dataclass
class ShardsConfig:
    """How samples become webdataset shards (used by `webly synth` and `webly shards`)."""

    source: str = "folder"  # `webly shards` input kind: folder | yfcc | img2dataset
    input: str = ""  # folder: images with .txt/.json sidecars; yfcc: the dataset file; img2dataset: its output folder
    photos: str = ""  # yfcc: the folder of photos named by id ({id}.jpg)
    samples_per_shard: int = 250
    heldout_fraction: float = 0.05  # `webly shards`: fraction of the folder kept out as the held-out set
    duplicates: str = "count"  # `webly shards`: off | count (pHash clusters, in the manifest) | drop (keep one each)
    subsets: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0])  # nested data sizes
    vocab: VocabConfig = field(default_factory=VocabConfig)


@dataclass
class DataConfig:
    root: str = "data/synthweb"  # dataset root: shards/, vocab.tsv, manifest.json
    subset: int = 0  # 1-based index of a nested subset (1 = smallest); 0 = all training shards
    image_size: int = 56  # side of the training crop
    min_scale: float = 0.35  # RandomResizedCrop area range is [min_scale, 1]
    shuffle_buffer: int = 500
    num_workers: int = 2
    resample_alpha: float = 1.0  # label resampling q(tag) ∝ count^α: 1 natural, 0.5 square root, 0 uniform
    synth: SynthConfig = field(default_factory=SynthConfig)
    shards: ShardsConfig = field(default_factory=ShardsConfig)


@dataclass
class ModelConfig:
    name: str = "tiny"
    depth: int = 10  # 10, 18, 34, 50, 101, 152, 200
    width: int = 16  # channels of the stem and first stage; 64 is torchvision's ResNet


@dataclass
class HeadConfig:
    name: str = "sigmoid"  # sigmoid | softmax | sampled_softmax | embedding
    # sampled_softmax only:
    num_sampled: int = 1024  # S negatives drawn per batch (shared by its images)
    proposal: str = "log_uniform"  # uniform | log_uniform | frequency (count^alpha from vocab.tsv)
    alpha: float = 0.75  # exponent of the frequency proposal
    sparse_lr: float = 0.0  # peak lr of the plain-SGD row update; 0: optim.lr / (1 - optim.momentum)
    eval_chunk: int = 65536  # tags per chunk of the full-softmax evaluation path
    table_dtype: str = "float32"  # float32 | bfloat16: storage of the tag table (bf16 halves it; stochastic rounding)
    # embedding only (pretrain.embedding_head; num_sampled, proposal and alpha choose its negatives too):
    loss: str = "negative_sampling"  # negative_sampling (Attalos im2vec) | hinge (DeViSE's hinge rank loss)
    margin: float = 0.1  # hinge margin
    finetune_vectors: bool = False  # update the tag vectors (sparse rows, plain SGD) instead of freezing them
    vectors_file: str = ""  # a word2vec / GloVe text file; empty: word2vec trained on the shards' tag lists
    vectors_dim: int = 16  # word2vec vector size (a vectors_file sets its own)
    vectors_epochs: int = 0  # word2vec passes over the tag lists; 0: enough for ~1M tag occurrences (5..300)
    vectors_cache: str = ""  # folder of cached tag vectors; empty: <data.root>/tag_vectors (run_dir if read-only)
    zeroshot_tags: list[str] = field(default_factory=list)  # tags held out of training, predicted zero-shot
    zeroshot_count: int = 0  # or: hold out this many, drawn (seeded) from zeroshot_pool
    zeroshot_pool: str = "auto"  # concepts (whole synthweb concepts: name + synonyms) | vocab (any tag) | auto
    # (concepts on a synthweb corpus, else vocab)


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adamw
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 20
    min_lr_ratio: float = 0.0  # the cosine ends at lr * min_lr_ratio
    # linear scaling (Goyal et al. 2017): lr x global_batch / reference_batch, global_batch = batch_size x
    # processes x accumulate; 0: lr as given
    reference_batch: int = 0


@dataclass
class TrainConfig:
    seed: int = 0
    steps: int = 200
    batch_size: int = 64  # images per process and micro-batch
    steps_per_epoch: int = 50  # fixed epoch length: the loader restarts its stream every this many steps
    checkpoint_every: int = 50
    keep_last: int = 3
    eval_every: int = 0  # 0: evaluate on the held-out shards only at the end
    eval_batches: int = 0  # 0: the whole held-out set
    log_every: int = 10
    threads: int = 0  # torch intra-op threads; 0 leaves torch's default
    resume: bool = True  # continue from the newest checkpoint in the run directory
    stop_after: int = 0  # stop (with a checkpoint) once this step is reached, e.g. to fit a time slot; 0: never
    accumulate: int = 1  # micro-batches of batch_size per optimiser step (gradient accumulation)
    precision: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16
    channels_last: bool = False  # NHWC weights and activations (faster convolutions on GPUs)
    compile: bool = False  # torch.compile the model
    backend: str = "auto"  # torch.distributed backend with several processes: auto (nccl on GPU, gloo) | gloo | nccl


@dataclass
class WandbConfig:
    mode: str = "auto"  # online | offline | disabled | auto (offline unless an API key is set)
    project: str = "webly"
    entity: str = ""
    tags: list[str] = field(default_factory=list)


@dataclass
class LoggingConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    progress: bool = True  # a progress bar with steps, loss and images/s


@dataclass
class PretrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    run_dir: str = ""  # where checkpoints and metrics go; empty: derived by the front door
