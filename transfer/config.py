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
    """Test images that near-duplicate pretraining images: perceptual hash OR nearest-neighbour margin (FAISS).

    Every corpus image is indexed by 1 + len(view_fractions) * view_grid**2 views (full image + zoomed crops, so
    crops are found); a test image is flagged when its margin to the best *other* corpus image reaches
    margin_threshold, or its pHash is within hash_threshold bits. Defaults: recall 1.0 at precision 1.0 on the
    demo benchmarks (36 planted copies among 450 test images), see transfer/dedup.py.
    """

    descriptor: str = "tiny"  # tiny: standardised tiny image | cnn: grid-pooled trunk stage | "": hash only
    margin: str = "ratio"  # ratio: 1 - d1/d2 (Lowe's ratio test on unit-vector distances) | difference: s1 - s2
    margin_threshold: float = 0.4  # flag when the margin is >= this (ratio: copies ~0.45-1, renders <= ~0.35)
    view_fractions: list[float] = field(default_factory=lambda: [0.88, 0.78])  # side fraction of each zoom
    view_grid: int = 3  # positions per axis of each zoom (3: corners, edge midpoints, centre)
    twin_cosine: float = 0.97  # corpus images this close (full views) are one photo held twice, not a negative
    tiny_size: int = 12  # tiny descriptor: side of a view in pixels
    chroma_weight: float = 1.5  # tiny descriptor: weight of chroma against luma
    cnn_stage: int = 3  # cnn descriptor: trunk stage (1..4) whose feature map is pooled
    cnn_grid: int = 4  # cnn descriptor: pooled to cnn_grid x cnn_grid
    image_size: int = 64  # cnn descriptor: side of a view fed to the trunk
    use_hash: bool = True
    hash_size: int = 8  # pHash of hash_size**2 bits
    hash_threshold: int = 2  # flag when the Hamming distance to the nearest corpus hash is <= this
    batch_size: int = 1024  # views described per batch (tiny: one matrix op; cnn: one forward pass)


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
