"""Glue between ``selfattention`` and other libraries, one module each, imported only when asked for.

- ``selfattention.integrations.transformers``: ``register()`` puts ``selfattention.attention`` under
  every attention of a Hugging Face ``transformers`` model (``attn_implementation="selfattention"``).
- ``selfattention.integrations.torch_library``: the attention tiers as one PyTorch custom operator,
  ``torch.ops.selfattention.attention``, with an autograd formula, that ``torch.compile`` traces
  without graph breaks.

This file imports nothing: ``import selfattention`` must not pay for transformers or torch.library.
"""
