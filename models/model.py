"""The assembled CTVIS model: network + set criterion + CT-CL for training, network + online
tracker + video post-processing for inference.

``CTVISConfig`` composes the frozen configs of the parts; ``build_model`` turns it into a
``CTVISModel``. Its ``forward(batch)`` is the training step (so DDP can wrap the module) and
returns every weighted loss term by name; ``infer_video(frames)`` is the released online
inference on one whole video.

Shapes: B clips, T frames, Q queries, K classes (K+1 logits, no-object last), C channels,
H, W padded image size, N ground-truth instances (max over the clips of a batch).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from .checkpoint import LoadReport, load_official_weights
from .clip_batch import ClipBatch
from .criterion import CriterionConfig, SetCriterion, gt_to_query_from_indices
from .ctcl import CTCLConfig, CTCLLoss
from .ctvis import CTVISNetwork, NetworkConfig
from .frame_outputs import FrameOutputs
from .matcher import FrameTarget
from .tracking import TrackerConfig
from .video_inference import OnlineVideoInference, VideoInstances, track_and_postprocess

__all__ = ["InferenceConfig", "CTVISConfig", "CTVISModel", "build_model"]


@dataclass(frozen=True)
class InferenceConfig:
    """Whole-video inference (the released ``TEST.*`` keys and ``num_topk``)."""

    # Video instances kept per video, over (track x class). None: the number of classes, as
    # the released model sets it (MODEL.SEM_SEG_HEAD.NUM_CLASSES: 40 for YouTube-VIS, 25 for OVIS).
    num_topk: Optional[int] = None
    num_clip_frames: int = 5  # frames per backbone chunk (TEST.NUM_CLIP_FRAMES)
    # Upsampling works on instance_chunk_size x interpolate_chunk_size mask planes at a time
    # (TEST.TEST_INSTANCE_CHUNK_SIZE, TEST.TEST_INTERPOLATE_CHUNK_SIZE); it bounds memory only.
    instance_chunk_size: int = 5
    interpolate_chunk_size: int = 5
    # Videos longer than this keep their per-frame masks on the CPU (TEST.TO_CPU_FRAMES).
    to_cpu_frames: int = 40

    def __post_init__(self) -> None:
        if self.num_topk is not None and self.num_topk < 1:
            raise ValueError(f"InferenceConfig.num_topk must be >= 1 or None, got {self.num_topk}")
        for name in ("num_clip_frames", "instance_chunk_size", "interpolate_chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"InferenceConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.to_cpu_frames < 0:
            raise ValueError(f"InferenceConfig.to_cpu_frames must be >= 0, got {self.to_cpu_frames}")


@dataclass(frozen=True)
class CTVISConfig:
    """Everything that defines a CTVIS model. Defaults: the released R50 YouTube-VIS 2019 model."""

    network: NetworkConfig = field(default_factory=NetworkConfig)
    criterion: CriterionConfig = field(default_factory=CriterionConfig)
    ctcl: CTCLConfig = field(default_factory=CTCLConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def __post_init__(self) -> None:
        num_queries = self.network.transformer_decoder.num_queries
        if self.ctcl.num_negatives is not None and not 1 <= self.ctcl.num_negatives < num_queries:
            raise ValueError(
                f"ctcl.num_negatives={self.ctcl.num_negatives} must be in 1..{num_queries - 1} "
                f"(negatives are drawn from the first num_negatives+1 of "
                f"network.transformer_decoder.num_queries={num_queries} queries)"
            )
        if self.criterion.num_points < 1:
            raise ValueError(f"criterion.num_points must be >= 1, got {self.criterion.num_points}")

    @property
    def num_negatives(self) -> int:
        """CT-CL negatives per anchor, with the released default (every other query) resolved."""
        return self.ctcl.resolved_num_negatives(self.network.transformer_decoder.num_queries)

    @property
    def num_topk(self) -> int:
        """The top-k of the video post-processing, with the released default resolved."""
        topk = self.inference.num_topk
        return self.network.num_classes if topk is None else topk


class CTVISModel(nn.Module):
    """CTVIS. Parameters: ``network.*`` (see ``models.ctvis``); ``criterion.empty_weight`` is
    the loss's no-object class weight (a buffer)."""

    def __init__(self, config: CTVISConfig) -> None:
        super().__init__()
        self.config = config
        self.network = CTVISNetwork(config.network)
        self.criterion = SetCriterion(config.network.num_classes, config.criterion)
        self.ctcl = CTCLLoss(config.ctcl)

    @property
    def device(self) -> torch.device:
        return self.network.pixel_mean.device

    # ------------------------------------------------------------------------------ training
    def preprocess_batch(self, batch: ClipBatch) -> torch.Tensor:
        """uint8 (B, T, 3, H, W) -> normalised float (B*T, 3, H, W), clip-major (row b*T + t),
        with every pixel outside a frame's ``image_sizes`` set to 0 (detectron2's ImageList pads
        after normalising)."""
        images = batch.images
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"ClipBatch.images must be (B,T,3,H,W), got shape {tuple(images.shape)}")
        height, width = images.shape[-2:]
        divisor = self.network.size_divisibility
        if divisor > 1 and (height % divisor or width % divisor):
            raise ValueError(f"ClipBatch.images: padded size {height}x{width} is not a multiple of {divisor}")
        frames = images.flatten(0, 1).to(self.device)
        normalized = (frames - self.network.pixel_mean) / self.network.pixel_std
        sizes = batch.image_sizes.reshape(-1, 2).to(self.device)  # (B*T, 2)
        rows = torch.arange(height, device=self.device)
        cols = torch.arange(width, device=self.device)
        inside = (rows[None, :, None] < sizes[:, 0, None, None]) & (cols[None, None, :] < sizes[:, 1, None, None])
        return normalized * inside[:, None].to(normalized.dtype)

    @staticmethod
    def _check_targets(batch: ClipBatch) -> Tuple[int, int, int]:
        batch_size, num_frames = batch.images.shape[:2]
        height, width = batch.images.shape[-2:]
        if batch.gt_classes.dim() != 2 or batch.gt_classes.shape[0] != batch_size:
            raise ValueError(f"ClipBatch.gt_classes must be (B={batch_size}, N), got {tuple(batch.gt_classes.shape)}")
        num_instances = batch.gt_classes.shape[1]
        if tuple(batch.gt_ids.shape) != (batch_size, num_frames, num_instances):
            raise ValueError(
                f"ClipBatch.gt_ids must be {(batch_size, num_frames, num_instances)}, got {tuple(batch.gt_ids.shape)}"
            )
        expected = (batch_size, num_frames, num_instances, height, width)
        if tuple(batch.gt_masks.shape) != expected:
            raise ValueError(f"ClipBatch.gt_masks must be {expected}, got {tuple(batch.gt_masks.shape)}")
        if tuple(batch.image_sizes.shape) != (batch_size, num_frames, 2):
            raise ValueError(
                f"ClipBatch.image_sizes must be {(batch_size, num_frames, 2)}, got {tuple(batch.image_sizes.shape)}"
            )
        return batch_size, num_frames, num_instances

    def _frame_targets(self, batch: ClipBatch) -> List[FrameTarget]:
        """The set criterion's B*T targets (row b*T + t): the instances present in that frame,
        with their masks at the padded size (the released ``prepare_targets``)."""
        classes = batch.gt_classes.to(self.device)
        present = (batch.gt_ids != -1).to(self.device)  # (B, T, N)
        masks = batch.gt_masks.to(self.device)
        batch_size, num_frames = present.shape[:2]
        # The criterion takes a list of per-frame targets: one boolean selection per frame.
        return [
            FrameTarget(labels=classes[b][present[b, t]], masks=masks[b, t][present[b, t]])
            for b in range(batch_size)
            for t in range(num_frames)
        ]

    def _ctcl_matching(
        self,
        pred_logits: torch.Tensor,
        pred_masks: torch.Tensor,
        batch: ClipBatch,
        generator: Optional[torch.Generator],
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The per-frame ground truth -> query map CT-CL uses, as the released ``CTCLPlugin``:
        a matching of its own of the final predictions against *every* instance of the clip
        (absent ones too, with their empty masks, so each has a query at every frame), with the
        instance masks at the frame's *unpadded* size. The matcher samples points in normalised
        coordinates, so an unpadded mask is stretched over the padded prediction, exactly as the
        released code does (it passes the raw ``Instances``, not the padded criterion targets).

        pred_logits (B*T, Q, K+1), pred_masks (B*T, Q, h, w). Returns gt_to_query (B, T, N)
        int64 and valid (B, T, N) bool (``gt_ids != -1``).
        """
        batch_size, num_frames, num_instances = batch.gt_ids.shape
        classes = batch.gt_classes.to(self.device)
        masks = batch.gt_masks.to(self.device)
        instances_per_clip = (batch.gt_classes >= 0).sum(1).tolist()  # N_b: padding columns are a suffix
        sizes = batch.image_sizes.reshape(-1, 2).tolist()
        targets = []
        for image, (height, width) in enumerate(sizes):  # per frame: the matcher takes a list
            b, t = divmod(image, num_frames)
            count = instances_per_clip[b]
            targets.append(FrameTarget(labels=classes[b, :count], masks=masks[b, t, :count, :height, :width]))
        # One matcher call per distinct unpadded size: the matcher stacks a call's target masks,
        # which must then share their size to keep the per-frame stretching.
        groups: Dict[Tuple[int, int], List[int]] = {}
        for image, size in enumerate(sizes):
            groups.setdefault(tuple(size), []).append(image)
        indices: List[Tuple[torch.Tensor, torch.Tensor]] = [None] * len(sizes)  # type: ignore[list-item]
        for images in groups.values():
            if len(images) == len(sizes):
                logits, mask_logits = pred_logits, pred_masks
            else:
                rows = torch.tensor(images, device=pred_logits.device)
                logits, mask_logits = pred_logits[rows], pred_masks[rows]
            matched = self.criterion.matcher(
                logits.detach(), mask_logits.detach(), [targets[i] for i in images], generator
            )
            for image, pair in zip(images, matched):
                indices[image] = pair
        gt_to_query = torch.zeros(batch_size, num_frames, num_instances, dtype=torch.int64)
        for b, count in enumerate(instances_per_clip):  # per clip: N_b differs
            clip_indices = indices[b * num_frames : (b + 1) * num_frames]
            gt_to_query[b, :, :count] = gt_to_query_from_indices(clip_indices, count)
        valid = (batch.gt_ids != -1).to(self.device)
        return gt_to_query.to(self.device), valid

    def forward(
        self,
        batch: ClipBatch,
        generator: Optional[torch.Generator] = None,
        seed: Optional[int] = None,
        num_masks: Optional[float] = None,
    ) -> Dict[str, torch.Tensor]:
        """The training step's losses for a batch of B clips of T frames.

        Args:
            batch: the clip batch (see ``models.clip_batch``); moved to the model's device here.
            generator / seed: source of the random points (matching, point-sampled losses) and of
                the CT-CL choices; a ``seed`` makes a generator on the model's device. With
                neither, the global torch RNG is used.
            num_masks: normaliser of the mask losses (a distributed trainer passes the mean
                over workers of the target count); default: this batch's count of targets.

        Returns:
            every weighted loss term by name: ``loss_ce``, ``loss_mask``, ``loss_dice``, the same
            with suffix ``_{i}`` for auxiliary prediction i (deep supervision), ``loss_reid`` and
            ``loss_aux_reid``. The training loss is their sum.
        """
        if generator is not None and seed is not None:
            raise ValueError("CTVISModel.forward: pass a generator or a seed, not both")
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(int(seed))
        batch_size, num_frames, _ = self._check_targets(batch)

        images = self.preprocess_batch(batch)
        outputs = self.network(images)
        pred_logits, pred_masks, pred_embeds = outputs.final.logits, outputs.final.masks, outputs.final.embeds
        aux = [(layer.logits, layer.masks) for layer in outputs.aux]

        losses, _ = self.criterion(
            pred_logits, pred_masks, self._frame_targets(batch), aux, num_masks=num_masks, generator=generator
        )
        gt_to_query, valid = self._ctcl_matching(pred_logits, pred_masks, batch, generator)
        embeds = pred_embeds.view(batch_size, num_frames, *pred_embeds.shape[1:])  # (B, T, Q, C)
        instance_mask = (batch.gt_classes >= 0).to(self.device)
        losses.update(self.ctcl(embeds, gt_to_query, valid, generator=generator, instance_mask=instance_mask))
        return losses

    # ----------------------------------------------------------------------------- inference
    @torch.no_grad()
    def infer_video(
        self, frames: torch.Tensor, output_size: Optional[Tuple[int, int]] = None,
        on_network_outputs: Optional[Callable[[FrameOutputs], FrameOutputs]] = None,
    ) -> VideoInstances:
        """Online inference on one video, as the released ``CTVISModel.inference_model``.

        frames: uint8 (T, 3, H, W) RGB (any device; moved chunk by chunk). The backbone runs on
        ``num_clip_frames`` frames at a time, each frame's outputs go through the streaming
        tracker, and the tracks are post-processed at ``output_size`` (default (H, W)).
        ``on_network_outputs`` sees each chunk's network outputs (logits (t, Q, K+1), masks
        (t, Q, h, w), embeds (t, Q, C)) and returns what the tracker gets (e.g. the outputs as an
        output cache stores them). Runs in eval mode (restored afterwards) and without gradients.
        """
        if frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(f"infer_video: frames must be uint8 (T, 3, H, W), got shape {tuple(frames.shape)}")
        if frames.dtype != torch.uint8:
            raise ValueError(f"infer_video: frames must be uint8 RGB, got {frames.dtype}")
        if frames.shape[0] == 0:
            raise ValueError("infer_video: the video has no frames")
        num_frames, _, height, width = frames.shape
        output_size = (height, width) if output_size is None else (int(output_size[0]), int(output_size[1]))
        chunk = self.config.inference.num_clip_frames

        def clip_outputs():
            for start in range(0, num_frames, chunk):
                outputs = self.network_outputs(frames[start : start + chunk])
                yield outputs if on_network_outputs is None else on_network_outputs(outputs)

        was_training = self.training
        self.eval()
        try:
            return track_network_outputs(self.config, clip_outputs(), self.network.padded_size(height, width),
                                         (height, width), output_size, num_frames, self.device)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def network_outputs(self, clip: torch.Tensor) -> FrameOutputs:
        """The network's final outputs on a clip of uint8 (t, 3, H, W) RGB frames (any device): logits
        (t, Q, K+1), mask logits (t, Q, h, w), embeds (t, Q, C). Each clip is normalised and padded on
        its own: the frames of a video share one size, so this is the released whole-video
        ImageList cut into chunks. Call in eval mode."""
        return self.network(self.network.preprocess(clip)[0]).final

    def online_inference(self, image_size: Tuple[int, int], output_size: Tuple[int, int]) -> OnlineVideoInference:
        """Bounded-memory inference over one video of (H, W) = ``image_size`` frames (the test size),
        with outputs at ``output_size``: feed it :meth:`network_outputs` of consecutive clips of
        ``inference.num_clip_frames`` frames (see :class:`OnlineVideoInference`)."""
        inference = self.config.inference
        return OnlineVideoInference(self.config.tracker, self.network.padded_size(*image_size), image_size,
                                    output_size, self.config.num_topk, device=self.device,
                                    planes_per_chunk=inference.instance_chunk_size * inference.interpolate_chunk_size)

    # ---------------------------------------------------------------------------- checkpoints
    def load_official_checkpoint(
        self,
        source: Union[str, Path, Mapping[str, Union[torch.Tensor, np.ndarray]]],
        strict: bool = False,
    ) -> LoadReport:
        """Load an official CTVIS ``.pth`` / Mask2Former ``.pkl`` (or an already read official
        state dict) into the network; see ``models.checkpoint.load_official_weights``."""
        return load_official_weights(self.network, source, strict=strict)


@torch.no_grad()
def track_network_outputs(config: CTVISConfig, clip_outputs: Iterable[FrameOutputs], padded_size: Tuple[int, int],
                          image_size: Tuple[int, int], output_size: Tuple[int, int], num_frames: int,
                          device: torch.device | str) -> VideoInstances:
    """What runs after the network in :meth:`CTVISModel.infer_video`: the tracker and the
    post-processing with the model config's options, over the network outputs of consecutive clips
    (logits (t, Q, K+1), masks (t, Q, h, w), embeds (t, Q, C)) of a ``num_frames``-frame video. A
    re-run from stored network outputs calls it directly (no network is built)."""
    inference = config.inference
    device = torch.device(device)
    mask_storage = device if num_frames <= inference.to_cpu_frames else torch.device("cpu")
    instances, _ = track_and_postprocess(
        clip_outputs, padded_size, config.tracker, image_size, output_size, config.num_topk, device=device,
        mask_storage_device=mask_storage, planes_per_chunk=inference.instance_chunk_size * inference.interpolate_chunk_size)
    return instances


def build_model(config: CTVISConfig) -> CTVISModel:
    return CTVISModel(config)
