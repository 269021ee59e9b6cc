"""The Fully Dense Network: encoders cut into stages, the decoder's fusion (Eq. 4, Theorems 1-2), the NNI
model space, the architecture as a value (``Connectivity``) and the pruned network built from it.

* :mod:`.backbones` -- encoders as stages + G with their ``FeatureInfo`` (channels, reduction);
* :mod:`.fusion` -- one decoder stage: per-edge ReLU6 -> 1x1 conv (-> BN) at the source resolution, one upsample
  per source resolution, weighted sum; the naive reference; BN folding;
* :mod:`.space` -- ``FDNSpace``, one ``InputChoice(n_chosen=None)`` per decoder stage;
* :mod:`.connectivity` -- ``Connectivity``: edges, weights, history, JSON, pruning, transfer;
* :mod:`.pruned` -- ``build_pruned``: the final plain ``nn.Module``.

Imports only torch, torchvision and NNI's model-space primitives.
"""
