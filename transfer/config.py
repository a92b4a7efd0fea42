"""Typed configuration of the transfer half: benchmarks, de-duplication and the transfer tasks."""

from __future__ import annotations

from dataclasses import dataclass, field

from pretrain.config import ModelConfig
from transfer.edits import HEAVY_EDITS

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
class CopyNetConfig:
    """The copy-detection descriptor (dedup.descriptor=copy): a small net trained on the corpus, SSCD-like."""

    input_size: int = 48  # side of a view fed to the net
    width: int = 32  # channels of the first stage (doubled per stage, 4 stages)
    dim: int = 64  # descriptor dimensions
    gem_p: float = 3.0  # GeM pooling exponent (1: average pooling)
    train_images: int = 1500  # corpus images sampled for training (held in memory at 64 x 64)
    steps: int = 250
    batch_size: int = 64  # images per step; each gives two edited views
    lr: float = 3e-3
    temperature: float = 0.1
    entropy_weight: float = 0.1  # KoLeo differential-entropy regulariser (SSCD uses ~0.1 .. 0.3)
    max_edits: int = 2  # each training view chains 1 .. max_edits heavy edits
    seed: int = 0
    edits: list[str] = field(default_factory=lambda: list(HEAVY_EDITS))


@dataclass
class IndexConfig:
    """How the corpus views are searched: exact flat search, or IVF-PQ beyond flat_max_images."""

    kind: str = "auto"  # auto: flat up to flat_max_images corpus images, else ivfpq | flat | ivfpq
    flat_max_images: int = 10_000_000
    pca_dims: int = 0  # 0: keep the descriptor's dimensions; else PCA-reduce (compact, and needed for PQ)
    whiten: bool = False  # PCA-whitening (eigenvalue power -1/2) instead of a plain projection
    ivf_lists: int = 0  # 0: about 4 * sqrt(views), at most (training sample) / 39
    pq_bytes: int = 16  # bytes per view in IVF-PQ (must divide the dimensions)
    nprobe: int = 16


@dataclass
class CalibrationConfig:
    """Threshold calibration on a held-out set of planted heavy edits (transfer/calibrate.py)."""

    target_precision: float = 0.0  # 0: off (margin_threshold as given); else choose the threshold for it
    copies: int = 200  # planted heavy-edit copies of corpus images; as many edited held-out images as negatives
    edits: list[str] = field(default_factory=lambda: list(HEAVY_EDITS))
    chain: int = 1  # K > 1: every planted image goes through K distinct edits of `edits` in sequence
    seed: int = 0


@dataclass
class DedupConfig:
    """Test images that near-duplicate pretraining images: perceptual hash OR nearest-neighbour margin (FAISS).

    Every corpus image is indexed by 1 + sum(g**2) views over the zooms' grids g (full image + zoomed crops, so
    crops are found); a test image (searched also mirrored, query_flip, and hue-shifted, query_hues) is flagged
    when its margin to the best *other* corpus image reaches margin_threshold, or its pHash is within
    hash_threshold bits. Defaults: recall 1.0 at precision 1.0 on the demo benchmarks (36 planted copies among
    450 test images); on planted chains of three heavy edits, calibrated for precision 0.99, held-out precision
    >= 0.99 at recall >= 0.95 (BENCHMARKS.md).
    """

    descriptor: str = "tiny"  # tiny: standardised tiny image | cnn: pooled trunk stage | copy: trained copy net
    # | "": hash only
    margin: str = "ratio"  # ratio: 1 - d1/d2 (Lowe's ratio test on unit-vector distances) | difference: s1 - s2
    margin_threshold: float = 0.4  # flag when the margin is >= this (ratio: copies ~0.45-1, renders <= ~0.35)
    # side fraction of each zoom: 0.88 for light crops, 0.7 for half-area ones (crop50)
    view_fractions: list[float] = field(default_factory=lambda: [0.88, 0.7])
    # positions per axis of each zoom (3: corners, edge midpoints, centre), one per fraction or one for all: the
    # 0.7 zoom needs a dense lattice, a half-area crop sits anywhere in its 0.3 of slack (3 positions miss ~1 in 8
    # of them; 7 keep enough margin when the crop is chained with other edits)
    view_grid: list[int] = field(default_factory=lambda: [3, 7])
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
    cnn_pool: str = "grid"  # cnn descriptor: grid (average-pooled cnn_grid x cnn_grid) | gem (global GeM)
    gem_p: float = 3.0  # cnn descriptor with cnn_pool=gem: the GeM exponent
    copy: CopyNetConfig = field(default_factory=CopyNetConfig)  # descriptor "copy"
    query_flip: bool = True  # also search each test image mirrored (finds flipped copies)
    # also search each test image with its hue shifted by these fractions of the colour circle, pooled like the
    # orientations (finds colour-jittered copies); [] searches the colours as they are
    query_hues: list[float] = field(default_factory=lambda: [-0.04, 0.04])
    index: IndexConfig = field(default_factory=IndexConfig)
    index_dir: str = ""  # where corpus descriptors and indexes live, per corpus; "": next to dedup.json
    extract_jobs: int = 1  # >1: the corpus is described by this many jobs over shard ranges, then assembled
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    near_misses: int = 24  # unflagged test images of highest margin recorded (the audit's "just below")
    report: bool = False  # write the audit report (audit/audit.md, gallery.png, sweep.png) after the run


@dataclass
class SearchConfig:
    """`webly search`: the corpus searched in the tag-vector space of an embedding-head run (transfer/search.py)."""

    run: str = ""  # a finished pretraining run with head=embedding
    text: str = ""  # tag words, comma-separated: one query, the mean of their vectors ("red, circle")
    image: str = ""  # reverse search: an image file, or a corpus key (train-00000012)
    gallery: list[str] = field(default_factory=list)  # gallery completion: image files / corpus keys, their mean
    k: int = 10  # results per query
    corpus: str = ""  # dataset root searched; empty: data.root
    out: str = ""  # results folder; empty: <work_dir>/search/<query>
    batch_size: int = 256  # corpus images embedded per batch
    instance_weight: float = 0.7  # image queries: weight of the tiny-image (copy) cosine against the semantic one
    index: IndexConfig = field(default_factory=IndexConfig)
    thumb: int = 96  # contact-sheet tile side, pixels


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
    feature_cache_mb: float = 1024.0  # frozen mode: keep the trunk's features per image up to this; 0: off


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
    repeats: int = 1  # runs with seeds seed, seed+1, ...; the metrics are their mean (short dense runs are noisy)
    threads: int = 0
    classification: ClassificationConfig = field(default_factory=ClassificationConfig)
    dense: DenseConfig = field(default_factory=DenseConfig)
    run_dir: str = ""
