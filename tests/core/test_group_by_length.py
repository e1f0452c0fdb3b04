"""train.group_by_length: micro-batches of rows sorted by length pad less, and the update is the same."""

import torch

from tests.core.test_importance_sampling import _trainer


def _weights_after(tmp_path, overrides, steps=2):
    tr = _trainer(tmp_path, ["train.sft_batch_size=6", "train.learning_rate=1e-2", *overrides])
    for _ in range(steps):
        m = tr.step()
    return torch.cat([p.detach().flatten() for p in tr.model.parameters()]), m, tr


def test_grouped_micro_batches_give_the_same_update(tmp_path):
    for algo in ("sft", "unified"):
        ref, m_ref, _ = _weights_after(tmp_path / f"{algo}-a", [f"algorithm={algo}"])
        grouped, m_g, tr = _weights_after(tmp_path / f"{algo}-b", [f"algorithm={algo}", "train.gradient_accumulation_steps=3",
                                                                   "train.group_by_length=true"])
        assert torch.allclose(ref, grouped, atol=2e-5), (algo, (ref - grouped).abs().max())
        for k in ("loss/total", "loss/sft"):
            if k in m_ref:
                assert abs(m_ref[k] - m_g[k]) < 1e-4, k


def test_grouped_micro_batches_are_sorted_and_trimmed(tmp_path):
    tr = _trainer(tmp_path, ["algorithm=sft", "train.sft_batch_size=12", "train.gradient_accumulation_steps=3",
                             "train.group_by_length=true"])
    jobs = [mb for g in tr.batches.build(0, {}).groups for mb in g.micro_batches]
    assert len(jobs) == 3
    lengths = [j.attn.sum(-1) for j in jobs]
    assert all(a.max() <= b.min() for a, b in zip(lengths, lengths[1:]))  # shortest rows first
    widths = [j.trimmed().cmask.shape[1] for j in jobs]
    assert widths[0] < jobs[0].cmask.shape[1]  # the short micro-batch drops the long rows' completion padding
    for j in jobs:
        t = j.trimmed()
        assert int(t.cmask.sum()) == int(j.cmask.sum()) and torch.equal(t.ids[:, :t.ids.shape[1]], j.ids[:, :t.ids.shape[1]])
