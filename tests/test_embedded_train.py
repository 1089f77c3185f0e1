"""The training loop's timestep sampler (training itself never runs in tests)."""

import torch

from invoke_repl.embedded.train import sample_timesteps


def test_timestep_bands_get_their_share_of_the_batch():
    torch.manual_seed(0)
    t = sample_timesteps(32, high_t_frac=0.15, mid_t_frac=0.25)
    assert t.shape == (32,)
    assert ((t[:4] >= 800) & (t[:4] < 1000)).all()  # int(32 * 0.15) = 4
    assert ((t[4:12] >= 100) & (t[4:12] < 500)).all()  # int(32 * 0.25) = 8
    assert ((t >= 0) & (t < 1000)).all()


def test_the_rest_of_the_batch_stays_uniform():
    torch.manual_seed(1)
    rest = torch.cat([sample_timesteps(32, 0.15, 0.25)[12:] for _ in range(400)])
    assert rest.float().mean().sub(499.5).abs() < 15
    assert (rest < 100).float().mean() > 0.07  # uniform puts 10 % below 100; the mid band puts none there


def test_zero_shares_draw_exactly_what_the_old_sampler_drew():
    """A run resumed with the defaults must repeat its RNG stream: no extra draws for an empty band."""
    torch.manual_seed(2)
    new = [sample_timesteps(32, 0.15, 0.0) for _ in range(3)], torch.randn(3)
    torch.manual_seed(2)
    old = []
    for _ in range(3):
        t = torch.randint(0, 1000, (32,))
        t[:4] = torch.randint(800, 1000, (4,))
        old.append(t)
    old = old, torch.randn(3)
    assert all(torch.equal(a, b) for a, b in zip(new[0], old[0], strict=True))
    assert torch.equal(new[1], old[1])
