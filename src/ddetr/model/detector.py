"""DeformableDETR: backbone + input projections + deformable transformer + class/box heads.

Symbols: B batch, Q queries, C classes, d hidden_dim, L feature levels.
State-dict keys follow the original release (``input_proj.0.0.weight``, ``transformer.level_embed``,
``class_embed.0.weight``, ``bbox_embed.0.layers.2.bias``...), with ``backbone.body.*`` for the backbone.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddetr.artefacts.card import ModelCard
from ddetr.artefacts.checkpoint import LoadedCheckpoint, load_checkpoint, load_into_model
from ddetr.errors import SpecError
from ddetr.model.backbone import Backbone, build_backbone
from ddetr.model.outputs import DetectionOutput, LayerPrediction
from ddetr.model.position import PositionEmbeddingLearned, PositionEmbeddingSine
from ddetr.model.predict import Detections, ModulePredictor, predict_images
from ddetr.model.preprocess import ImageInput
from ddetr.model.transformer import DeformableTransformer, inverse_sigmoid
from ddetr.spec.rules import GROUP_NORM_GROUPS, check_model_section
from ddetr.spec.sections import ModelSection

logger = logging.getLogger(__name__)


class MLP(nn.Module):
    """Feed-forward network: ``num_layers`` linears with ReLU between them (the box head)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip([input_dim, *dims], [*dims, output_dim]))

    def forward(self, x: Tensor) -> Tensor:
        """x (..., input_dim) -> (..., output_dim)."""
        for index, layer in enumerate(self.layers):
            x = layer(x) if index == len(self.layers) - 1 else F.relu(layer(x))
        return x


class DeformableDETR(nn.Module):
    """Deformable DETR detector (single-scale, multi-scale, box refinement, two-stage).

    Args:
        backbone: feature extractor returning the backbone levels.
        transformer: the deformable transformer (its ``two_stage`` decides the variant).
        num_classes: C, the width of the class logits.
        num_queries: Q.
        num_feature_levels: L (backbone levels + extra stride-2 conv levels).
        aux_loss: return every decoder layer's predictions.
        with_box_refine: iterative box refinement (independent heads per decoder layer).
        model_config: the spec section the model was built from (kept as ``self.model_config``).
        card: the model card of stored weights (class names, preprocessing) when the model runs a stored
            artefact (``from_checkpoint``); None for a model being trained. ``predict`` uses it.
    """

    def __init__(
        self,
        backbone: Backbone,
        transformer: DeformableTransformer,
        num_classes: int,
        num_queries: int,
        num_feature_levels: int,
        aux_loss: bool = True,
        with_box_refine: bool = False,
        model_config: ModelSection | None = None,
        card: ModelCard | None = None,
    ) -> None:
        super().__init__()
        self.card = card
        hidden_dim = transformer.d_model
        self.two_stage = transformer.two_stage
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.num_feature_levels = num_feature_levels
        self.aux_loss = aux_loss
        self.with_box_refine = with_box_refine
        self.model_config = model_config
        self.backbone = backbone
        self.transformer = transformer
        self.position_embedding: nn.Module = (
            PositionEmbeddingLearned(hidden_dim // 2)
            if model_config is not None and model_config.position_embedding == "learned"
            else PositionEmbeddingSine(hidden_dim // 2)
        )

        projections = [
            nn.Sequential(
                nn.Conv2d(channels, hidden_dim, kernel_size=1), nn.GroupNorm(GROUP_NORM_GROUPS, hidden_dim)
            )
            for channels in backbone.num_channels
        ]
        in_channels = backbone.num_channels[-1]
        for _ in range(num_feature_levels - len(backbone.num_channels)):
            projections.append(
                nn.Sequential(
                    nn.Conv2d(in_channels, hidden_dim, kernel_size=3, stride=2, padding=1),
                    nn.GroupNorm(GROUP_NORM_GROUPS, hidden_dim),
                )
            )
            in_channels = hidden_dim
        self.input_proj = nn.ModuleList(projections)
        for projection in self.input_proj:
            nn.init.xavier_uniform_(projection[0].weight, gain=1)
            nn.init.constant_(projection[0].bias, 0)
        if not self.two_stage:
            self.query_embed = nn.Embedding(num_queries, hidden_dim * 2)

        class_embed = nn.Linear(hidden_dim, num_classes)
        bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        prior_prob = 0.01
        nn.init.constant_(class_embed.bias, -math.log((1 - prior_prob) / prior_prob))
        nn.init.constant_(bbox_embed.layers[-1].weight, 0)
        nn.init.constant_(bbox_embed.layers[-1].bias, 0)
        num_pred = transformer.decoder.num_layers + (1 if self.two_stage else 0)
        if with_box_refine:
            self.class_embed = nn.ModuleList(copy.deepcopy(class_embed) for _ in range(num_pred))
            self.bbox_embed = nn.ModuleList(copy.deepcopy(bbox_embed) for _ in range(num_pred))
            nn.init.constant_(self.bbox_embed[0].layers[-1].bias[2:], -2.0)
            self.transformer.decoder.bbox_embed = self.bbox_embed
        else:
            nn.init.constant_(bbox_embed.layers[-1].bias[2:], -2.0)
            # one head shared by every decoder layer (repeated keys in the state dict, as in the original)
            self.class_embed = nn.ModuleList([class_embed] * num_pred)
            self.bbox_embed = nn.ModuleList([bbox_embed] * num_pred)
            self.transformer.decoder.bbox_embed = None
        if self.two_stage:
            self.transformer.decoder.class_embed = self.class_embed
            for head in self.bbox_embed:
                nn.init.constant_(head.layers[-1].bias[2:], 0.0)

    @classmethod
    def from_config(
        cls, model: ModelSection, num_classes: int, card: ModelCard | None = None
    ) -> DeformableDETR:
        """Build the detector described by the spec's ``model`` section (random weights).

        ``card`` is kept as ``self.card`` (see the class arguments).

        Raises:
            SpecError: inconsistent architecture fields (``ddetr.spec.rules.check_model_section``, the rules
                the spec loader applies; checked again here, before any module is built, for a section made
                in Python or read from a checkpoint).
            CheckpointError: ``model.pretrained_backbone_path`` unreadable or not fitting.
        """
        check_model_section(model, num_classes)
        backbone = build_backbone(model)
        transformer = DeformableTransformer(
            d_model=model.hidden_dim,
            nhead=model.nheads,
            num_encoder_layers=model.enc_layers,
            num_decoder_layers=model.dec_layers,
            dim_feedforward=model.dim_feedforward,
            dropout=model.dropout_ratio,
            num_feature_levels=model.num_feature_levels,
            dec_n_points=model.dec_n_points,
            enc_n_points=model.enc_n_points,
            two_stage=model.two_stage,
            two_stage_num_proposals=model.num_queries,
            dec_dim_feedforward=model.dec_dim_feedforward,
            activation=model.activation,
            dec_nhead=model.dec_nheads,
        )
        return cls(
            backbone,
            transformer,
            num_classes=num_classes,
            num_queries=model.num_queries,
            num_feature_levels=model.num_feature_levels,
            aux_loss=model.aux_loss,
            with_box_refine=model.with_box_refine,
            model_config=model.model_copy(deep=True),
            card=card,
        )

    @classmethod
    def from_checkpoint(cls, path: str | Path, encryption_key: str | None = None) -> DeformableDETR:
        """Rebuild the architecture and weights from a ddetr checkpoint alone (its card included).

        ``encryption_key`` is the key an encrypted checkpoint was written with (plain files ignore it).

        Example:
            A checkpoint written here from a tiny random model (a trained one is ``results/train/*.pth``):

            >>> import tempfile
            >>> import numpy as np
            >>> from ddetr.artefacts.card import ModelCard
            >>> from ddetr.artefacts.checkpoint import save_checkpoint
            >>> section = ModelSection(backbone="timm:test_resnet", hidden_dim=32, nheads=2, enc_layers=1,
            ...     dec_layers=1, dim_feedforward=32, num_queries=8, num_select=5, num_feature_levels=2,
            ...     return_interm_indices=[2, 3])
            >>> card = ModelCard(section, num_classes=3, class_names=("", "cell", "blob"), num_select=5)
            >>> weights = DeformableDETR.from_config(section, 3).state_dict()
            >>> with tempfile.TemporaryDirectory() as folder:
            ...     path = save_checkpoint(f"{folder}/model.pth", card=card, state_dict=weights)
            ...     model = DeformableDETR.from_checkpoint(path)
            >>> model.card.class_names, model.card.num_select
            (('', 'cell', 'blob'), 5)
            >>> found = model.predict(np.zeros((48, 64, 3), np.uint8), conf_threshold=0.0)[0]
            >>> len(found) <= 5 and set(found.class_names) <= {"cell", "blob"}
            True
        """
        model, _ = build_model_from_checkpoint(path, encryption_key=encryption_key)
        return model

    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        *,
        conf_threshold: float = 0.5,
        num_select: int | None = None,
        batch_size: int = 4,
    ) -> list[Detections]:
        """Detect objects in paths, PIL images or RGB arrays; one :class:`Detections` per image (xyxy pixels).

        Preprocessing, class names and ``num_select`` come from ``self.card`` (a model built from a spec
        without a card uses the spec defaults and its own ``num_select``). See
        :func:`ddetr.model.predict.predict_images`.
        """
        card = self.card
        if card is None:
            if self.model_config is None:
                raise SpecError("predict: this model has neither a model card nor a model section.")
            card = ModelCard(
                model=self.model_config, num_classes=self.num_classes, num_select=self.model_config.num_select
            )
        return predict_images(
            ModulePredictor(self, card),
            images,
            conf_threshold=conf_threshold,
            num_select=num_select,
            batch_size=batch_size,
        )

    def forward(self, images: Tensor, mask: Tensor | None = None) -> DetectionOutput:
        """Detect.

        Args:
            images: (B, 3, H, W) normalised images, padded to a common size.
            mask: (B, H, W) bool, True at padding pixels; None means no padding.

        Returns:
            :class:`DetectionOutput`: logits (B, Q, C) and boxes (B, Q, 4) normalised (cx, cy, w, h)
            relative to each unpadded image, plus aux/encoder predictions.
        """
        if mask is None:
            mask = torch.zeros(
                images.shape[0], images.shape[2], images.shape[3], dtype=torch.bool, device=images.device
            )
        features = self.backbone(images, mask)
        srcs: list[Tensor] = []
        masks: list[Tensor] = []
        pos_embeds: list[Tensor] = []
        for level, (feature, level_mask) in enumerate(features):
            src = self.input_proj[level](feature)
            srcs.append(src)
            masks.append(level_mask)
            pos_embeds.append(self.position_embedding(level_mask).to(src.dtype))
        for level in range(len(features), self.num_feature_levels):
            # the first extra level convolves the last backbone map, later ones the previous extra level
            src = self.input_proj[level](features[-1][0] if level == len(features) else srcs[-1])
            level_mask = F.interpolate(mask[None].float(), size=src.shape[-2:]).to(torch.bool)[0]
            srcs.append(src)
            masks.append(level_mask)
            pos_embeds.append(self.position_embedding(level_mask).to(src.dtype))

        query_embed = None if self.two_stage else self.query_embed.weight
        out = self.transformer(srcs, masks, pos_embeds, query_embed)

        predictions: list[LayerPrediction] = []
        for level in range(out.hidden_states.shape[0]):
            reference = out.init_reference if level == 0 else out.inter_references[level - 1]
            reference = inverse_sigmoid(reference)
            logits = self.class_embed[level](out.hidden_states[level])  # (B, Q, C)
            delta = self.bbox_embed[level](out.hidden_states[level])  # (B, Q, 4)
            if reference.shape[-1] == 4:
                coord = delta + reference
            else:
                coord = torch.cat([delta[..., :2] + reference, delta[..., 2:]], -1)
            predictions.append(LayerPrediction(logits, coord.sigmoid()))

        enc_outputs = None
        if out.enc_outputs_class is not None and out.enc_outputs_coord_unact is not None:
            enc_outputs = LayerPrediction(out.enc_outputs_class, out.enc_outputs_coord_unact.sigmoid())
        return DetectionOutput(
            pred_logits=predictions[-1].pred_logits,
            pred_boxes=predictions[-1].pred_boxes,
            aux_outputs=predictions[:-1] if self.aux_loss else [],
            enc_outputs=enc_outputs,
        )


def build_model(card: ModelCard) -> DeformableDETR:
    """The float detector of ``card``'s architecture, for running a stored model (random weights).

    The backbone's batch norm is frozen (folded into its convolutions: in eval mode it equals a live one) and
    the backbone-only weights file it was once initialised from is never re-read: the stored weights hold it.

    Raises:
        SpecError: an inconsistent architecture in the card.
    """
    architecture = card.model.model_copy(update={"pretrained_backbone_path": "", "freeze_backbone_bn": True})
    return DeformableDETR.from_config(architecture, card.num_classes, card=card)


def build_model_from_checkpoint(
    path: str | os.PathLike[str],
    map_location: str | torch.device = "cpu",
    encryption_key: str | None = None,
) -> tuple[DeformableDETR, LoadedCheckpoint]:
    """Build the model a checkpoint's card describes and load its weights strictly.

    Args:
        path: a ddetr or ddetr-Lightning checkpoint (quantized ones included).
        map_location: device for the tensors (the model is built on CPU, then holds these tensors).
        encryption_key: the key an encrypted checkpoint was written with (plain files ignore it).

    Returns:
        ``(model, loaded)`` with the model in eval mode and ``model.card`` the checkpoint's card.

    Raises:
        CheckpointError: unreadable checkpoint, or weights that do not fit the recorded architecture
            (names the first missing/unexpected keys and shape differences).
        UnavailableError: a quantized checkpoint whose back end's package (torchao, nvidia-modelopt) is missing.
    """
    loaded = load_checkpoint(path, map_location=map_location, encryption_key=encryption_key)
    model = build_model(loaded.card)
    if loaded.card.quantization:  # torchao / ModelOpt: give the float model the quantized layout first
        from ddetr.model.quantized import prepare_quantized_model

        model = prepare_quantized_model(model, loaded)
    load_into_model(model, loaded.state_dict, str(loaded.path))
    model.eval()
    return model, loaded
