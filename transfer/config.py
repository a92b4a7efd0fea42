"""Typed configuration of the transfer half: benchmarks, de-duplication and the transfer tasks."""

from __future__ import annotations

from dataclasses import dataclass, field

from pretrain.config import ModelConfig

TASKS = ("classification", "detection", "instance", "semantic", "pose")
MODES = ("frozen", "finetune")


@dataclass
class SynthBenchConfig:
    """Synthetic benchmarks drawn from the same world as the corpus (ImageFolder, COCO JSON, VOC layout)."""

    root: str = "data/benchmarks"
    seed: int = 1  # differs from the corpus seed: new scenes, same world
    num_classes: int = 8  # concepts used as classes / categories (the most frequent ones of the corpus)
    cls_image_size: int = 64
    dense_image_size: int = 96
    max_objects: int = 3
    train_images: int = 400  # per benchmark
    val_images: int = 100
    test_images: int = 200
    near_duplicate_fraction: float = 0.08  # of each test set: edited copies of corpus images


@dataclass
class DedupConfig:
    """Test images that near-duplicate pretraining images: perceptual hash + CNN embeddings + FAISS."""

    hash_size: int = 8  # pHash of hash_size**2 bits
    hash_threshold: int = 8  # flag when the Hamming distance to the nearest corpus hash is <= this
    cnn_threshold: float = 0.9  # flag when the cosine similarity of CNN embeddings is >= this
    image_size: int = 64  # CNN descriptor input size
    batch_size: int = 128
    use_hash: bool = True
    use_cnn: bool = True


@dataclass
class ClassificationConfig:
    probe_epochs: int = 200  # linear probe: full-batch Adam epochs over the cached features
    probe_lr: float = 0.05
    finetune_steps: int = 150
    finetune_lr: float = 0.05


@dataclass
class DenseConfig:
    """Sizes of the detection / segmentation heads: small for CPU profiles, torchvision's defaults for paper."""

    fpn_channels: int = 32
    rpn_pre_nms: int = 200
    rpn_post_nms: int = 50
    box_batch_per_image: int = 64
    representation_size: int = 128  # box head MLP width
    mask_channels: int = 32
    mask_layers: int = 2
    keypoint_channels: int = 32
    keypoint_layers: int = 2
    seg_channels: int = 32  # semantic segmentation head


@dataclass
class TransferConfig:
    task: str = "classification"  # classification | detection | instance | semantic | pose
    mode: str = "frozen"  # frozen: the trunk is fixed; finetune: all layers train
    init: str = ""  # a pretraining run directory; empty: random initialisation (the baseline)
    model: ModelConfig = field(default_factory=ModelConfig)  # the trunk of a random init; else read from `init`
    benchmark: str = "data/benchmarks"
    dedup: str = ""  # a dedup manifest; its flagged test ids make the de-duplicated test set
    image_size: int = 96
    steps: int = 200
    batch_size: int = 8
    lr: float = 0.02
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    seed: int = 0
    threads: int = 0
    classification: ClassificationConfig = field(default_factory=ClassificationConfig)
    dense: DenseConfig = field(default_factory=DenseConfig)
    run_dir: str = ""
