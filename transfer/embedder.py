"""An embedding-head run as a joint image / text encoder: images and tag words land in one vector space.

Images go through the exported trunk (`trunk.pt`) and the head's projection (`embedding.pt`); a text query of
one or more tags is the mean of their unit tag vectors, so an inner product is the head's own tag score (mean
over the query's tags). The image side plugs into transfer.descriptors as a describer (kind "embed"), whose
corpus pass and cache the search index reuses.
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pretrain.atomic import read_json
from pretrain.config import ModelConfig
from pretrain.embedding_head import EXPORT_NAME
from pretrain.images import to_float
from pretrain.models import ResNetTrunk
from pretrain.tags import normalize_tag
from transfer.backbone import load_trunk
from transfer.descriptors import trunk_fingerprint


@dataclass
class Embedder:
    trunk: ResNetTrunk
    weight: torch.Tensor  # D x F projection
    bias: torch.Tensor  # D
    vectors: torch.Tensor  # V x D unit tag vectors
    tags: list[str]
    heldout: list[int]  # tags held out of training (zero-shot)
    image_size: int  # the side the trunk was trained at
    run: str

    @classmethod
    def from_run(cls, run_dir: str | Path) -> Embedder:
        """The trunk, projection and tag vectors of a finished `head=embedding` pretraining run."""
        run_dir = Path(run_dir)
        export = run_dir / EXPORT_NAME
        if not export.is_file():
            manifest = run_dir / "manifest.json"
            head = read_json(manifest)["config"]["head"]["name"] if manifest.is_file() else "?"
            raise ValueError(f"{run_dir}: no {EXPORT_NAME}; search and zero-shot need a finished pretraining run "
                             f"with head=embedding (this one has head={head})")
        manifest = read_json(run_dir / "manifest.json")
        trunk = load_trunk(str(run_dir), ModelConfig()).eval()
        state = torch.load(export, map_location="cpu", weights_only=True)
        return cls(trunk, state["projection.weight"].float(), state["projection.bias"].float(),
                   F.normalize(state["vectors"].float(), dim=1), list(state["tags"]), list(state["heldout"]),
                   int(manifest["config"]["data"]["image_size"]), str(run_dir))

    @property
    def index(self) -> dict[str, int]:
        return {tag: i for i, tag in enumerate(self.tags)}

    @torch.inference_mode()
    def embed_images(self, images: torch.Tensor) -> np.ndarray:
        """uint8 (or 0..255 float) N x 3 x S x S images -> N x D points e, as the head scores them (e . v_t)."""
        return F.linear(self.trunk(to_float(images)), self.weight, self.bias).numpy()

    def tag_ids(self, words: list[str]) -> list[int]:
        """Vocabulary ids of tag words (normalised as the corpus's tags are); an unknown one raises, with the
        closest known tags as suggestions."""
        index, ids = self.index, []
        for word in words:
            tag = normalize_tag(word)
            if tag not in index:
                close = difflib.get_close_matches(tag, self.tags, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ValueError(f"tag {word!r} is not in the vocabulary of {self.run}{hint}")
            ids.append(index[tag])
        return ids

    def embed_text(self, words: list[str]) -> np.ndarray:
        """The mean of the words' unit tag vectors (1 x D): its inner product with an image's point is the mean
        of the head's scores of those tags."""
        if not words:
            raise ValueError("a text query needs at least one tag")
        return self.vectors[self.tag_ids(words)].mean(dim=0, keepdim=True).numpy()

    def describer(self) -> ImageEmbedding:
        return ImageEmbedding(self)


class ImageEmbedding:
    """The embedder's image side as a transfer.descriptors describer: views (B x s x s x 3) -> points e."""

    kind = "embed"

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self.input_size = embedder.image_size
        projection = hashlib.sha256(embedder.weight.numpy().tobytes() + embedder.bias.numpy().tobytes())
        self.spec = {"kind": self.kind, "trunk": trunk_fingerprint(embedder.trunk), "image_size": self.input_size,
                     "projection": projection.hexdigest()}

    def __call__(self, views: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(views)).permute(0, 3, 1, 2)
        return self.embedder.embed_images(batch)
