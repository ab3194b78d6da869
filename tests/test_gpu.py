"""The head model on a CUDA GPU: the same lookup as on the CPU, and a short training run that learns.

Skipped, with the reason, on machines without a CUDA GPU (the CI machine has none)."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from synctalk.models.encoding import TriPlaneHashEncoding
from synctalk.runs import build_datamodule, build_system, load_run
from tests.conftest import compose_config

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here)")]


@pytest.mark.parametrize("gpu_kernel", [True, False], ids=["triton", "tensor_ops"])
def test_cuda_lookup_and_gradient_match_the_cpu(gpu_kernel):
    """The model-size encoding on the GPU (the Triton kernels, or tensor ops) against the CPU's tensor ops:
    features to 1e-6, table gradients to 1e-5 of their largest."""
    torch.manual_seed(0)
    enc = TriPlaneHashEncoding(cpu_kernel=False, gpu_kernel=gpu_kernel)
    with torch.no_grad():
        enc.grid.embeddings.uniform_(-1, 1)
    points = torch.rand(200000, 3) * 2.2 - 1.1  # some outside the bound: clamped the same way on both devices
    upstream = torch.randn(200000, enc.output_dim)
    cpu_out = enc(points)
    (cpu_out * upstream).sum().backward()
    cpu_grad = enc.grid.embeddings.grad.clone()
    enc.zero_grad()
    enc.cuda()
    cuda_out = enc(points.cuda())
    (cuda_out * upstream.cuda()).sum().backward()
    assert enc.grid.lookup(torch.device("cuda")) == ("triton" if gpu_kernel else "tensor_ops")
    torch.testing.assert_close(cuda_out.cpu(), cpu_out, atol=1e-6, rtol=0)
    scale = float(cpu_grad.abs().max())
    assert float((enc.grid.embeddings.grad.cpu() - cpu_grad).abs().max()) <= 1e-5 * scale


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_trained_on_the_gpu_renders_there_as_on_the_cpu(tmp_path, precision):
    """The smoke model trained 400 steps on the GPU, saved and loaded back as ``synctalk render`` / ``evaluate`` do:
    it renders on the GPU, the held-out frame's PSNR is well above an untrained field's (on a CPU: 25.9 dB
    after 400 steps, 18.8 after 2), and the CPU renders the same weights to nearly the same image."""
    cfg = compose_config("train", ["experiment=smoke", "trainer.max_steps=400", "data.chunk=65536",
                                    f"model.net.mlp_precision={precision}"],
                         root=tmp_path)
    torch.manual_seed(0)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup()
    system = build_system(cfg, len(dm.train_frames))
    trainer = pl.Trainer(max_steps=cfg.trainer.max_steps, accelerator="gpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(system, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "gpu.ckpt")
    _, loaded = load_run(tmp_path / "gpu.ckpt")
    assert loaded.device.type == "cuda" and loaded.net.encoding.grid.lookup(loaded.device) == "triton"
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    assert loaded.net.density_net.compute_dtype(loaded.device) == dtype
    gpu_image, gt = loaded.render_frame(dm.val, 0), dm.val.gt(0)
    psnr = float(-10 * torch.log10(((gpu_image - gt) ** 2).mean()))
    cpu_image = loaded.cpu().render_frame(dm.val, 0)
    difference = float((gpu_image - cpu_image).abs().mean())
    print(f"{precision}: PSNR {psnr:.2f} dB, GPU vs CPU image mean abs difference {difference:.2e}")
    assert psnr > 22.0 and difference < 1e-2, (psnr, difference)
