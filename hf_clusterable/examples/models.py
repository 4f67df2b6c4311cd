"""Small models the paper trains from scratch, as Hugging Face models so Trainer, from_pretrained and the Hub apply.

`ClusterNetForImageClassification` is the paper's CNN/MLP family (convolutions, then fully connected layers, which are
the clustered matrices); with no convolutions it is a plain MLP, e.g. for scikit-learn's 8x8 digits.
`modular_addition_model` is the paper's one-layer transformer on (a + b) mod p, built as a GPT-2.

Nothing is registered at import: `register_auto_classes()` makes ClusterNet checkpoints loadable through the Auto
classes, and the command line calls it before loading a model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    GPT2Config,
    GPT2LMHeadModel,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import ImageClassifierOutput


class ClusterNetConfig(PretrainedConfig):
    """Convolutions (3x3, ReLU, 2x2 max-pool each) followed by fully connected ReLU layers and a classifier.

    Args:
        image_size (`int`, defaults to 28): height and width of the input.
        num_channels (`int`, defaults to 1): input channels.
        conv_channels (`list[int]`, defaults to `[]`): output channels of each convolution; empty for an MLP.
        hidden_sizes (`list[int]`, defaults to `[64, 64]`): widths of the fully connected layers.
        num_labels (`int`, defaults to 10): classes.
    """

    model_type = "hf_clusterable_net"

    def __init__(
        self,
        image_size: int = 28,
        num_channels: int = 1,
        conv_channels: list[int] | None = None,
        hidden_sizes: list[int] | None = None,
        num_labels: int = 10,
        **kwargs,
    ):
        self.image_size = image_size
        self.num_channels = num_channels
        self.conv_channels = list(conv_channels or [])
        self.hidden_sizes = list(hidden_sizes if hidden_sizes is not None else [64, 64])
        super().__init__(num_labels=num_labels, **kwargs)


class ClusterNetForImageClassification(PreTrainedModel):
    config_class = ClusterNetConfig
    # Default targets (see hf_clusterable.constants): the fully connected layers, each clustered on its own.
    cluster_targets = r"(hidden\.\d+|classifier)"
    main_input_name = "pixel_values"
    # The loss is a per-batch mean, so Trainer must divide it by the accumulation steps itself.
    accepts_loss_kwargs = False

    def __init__(self, config: ClusterNetConfig):
        super().__init__(config)
        layers, channels, size = [], config.num_channels, config.image_size
        for out in config.conv_channels:
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            channels, size = out, size // 2
        self.features = nn.Sequential(*layers)
        dims = [channels * size * size, *config.hidden_sizes]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.classifier = nn.Linear(dims[-1], config.num_labels)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.reset_parameters()  # PyTorch's defaults, as in the paper's code

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, return_dict: bool | None = None
    ) -> ImageClassifierOutput:
        x = self.features(pixel_values).flatten(1)
        for layer in self.hidden:
            x = F.relu(layer(x))
        logits = self.classifier(x)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits)


def register_auto_classes() -> None:
    """Let `AutoConfig` / `AutoModelForImageClassification` load ClusterNet checkpoints (safe to call twice)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if ClusterNetConfig.model_type not in CONFIG_MAPPING:
        AutoConfig.register(ClusterNetConfig.model_type, ClusterNetConfig)
        AutoModelForImageClassification.register(ClusterNetConfig, ClusterNetForImageClassification)


def modular_addition_model(p: int = 113, d_model: int = 128, n_heads: int = 4, d_mlp: int = 128, seed: int = 0):
    """The paper's one-layer transformer for (a + b) mod p: tokens 0..p-1 are numbers, p is "=".

    Sequences are `[a, b, =, answer]` with the loss on the answer only (see `examples.modular_addition`), so
    GPT-2's own causal-LM loss trains the prediction made at "=". ReLU MLP, no dropout, untied embeddings. The
    weights are drawn from `seed` without touching the global random state.
    """
    config = GPT2Config(
        vocab_size=p + 1,
        n_positions=4,
        n_embd=d_model,
        n_layer=1,
        n_head=n_heads,
        n_inner=d_mlp,
        activation_function="relu",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=False,
        bos_token_id=p,
        eos_token_id=p,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT2LMHeadModel(config)
