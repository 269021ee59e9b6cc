"""GPU checks (deselected by default; run with ``pytest -m gpu`` on a machine with CUDA)."""
import pytest
import torch

from nni_sparsemask import FDNSpace, build_pruned
from helpers import TINY

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_space_trains_one_step_on_gpu():
    space = FDNSpace(num_classes=5, decoder_channels=8, **TINY).cuda()
    x = torch.randn(2, 3, 64, 64, device="cuda")
    out = space(x)
    out.mean().backward()
    assert out.shape == (2, 5, 64, 64) and out.is_cuda
    assert all(p.grad is not None for p in space.head.parameters())


def test_pruned_net_gives_the_same_logits_on_gpu_and_cpu():
    torch.manual_seed(0)
    space = FDNSpace(num_classes=5, decoder_channels=8, **TINY)
    net = build_pruned(space.dense_connectivity(), num_classes=5, decoder_channels=8).eval()
    x = torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        cpu = net(x)
        gpu = net.cuda()(x.cuda()).cpu()
    assert torch.allclose(cpu, gpu, atol=1e-4, rtol=1e-3)
